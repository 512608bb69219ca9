"""The outbound request path (clients/outbound.py) and the link fetcher on it, against real local servers.

DNS is replaced by a fake resolver (the seam `resolver=`), never the real one: names like `cdn.example.test` resolve
to whatever a test says, which is how a rebinding or hostile DNS answer is played.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sdtask.addresses import AddressPolicy, IPAddress
from sdtask.clients.fetcher import LinkFetcher, inline_links, replace_links
from sdtask.clients.outbound import Outbound
from sdtask.clients.s3 import S3Client, S3Settings, make_s3_client
from sdtask.links import ByteBudget, LinkError, LinkLimitError, LinkLimits, find_links, restore_links
from tests.links_content import b64, content_with_links
from tests.origin import PNG, Origin, gzip_bomb, reply

CAP = 1024
LOCAL = AddressPolicy(allowed_hosts=frozenset({"127.0.0.1"}))


class FakeDNS:
    """Answers from a table; counts lookups (a second lookup is what DNS rebinding needs)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.table[host]]


HOSTILE_DNS = {
    "metadata.evil.test": ["169.254.169.254"],
    "ten.evil.test": ["10.1.2.3"],
    "loop.evil.test": ["127.0.0.1"],
    "loop6.evil.test": ["::1"],
    "mapped.evil.test": ["::ffff:127.0.0.1"],
    "sixtofour.evil.test": ["2002:7f00:1::1"],
    "nat64.evil.test": ["64:ff9b::a9fe:a9fe"],
    "half.evil.test": ["93.184.216.34", "127.0.0.1"],
}


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as server:
        yield server


def fetch(url: str, *, policy: AddressPolicy = LOCAL, resolver: Any = None, **options: Any) -> bytes:
    async def run() -> bytes:
        options.setdefault("max_bytes", CAP)
        async with LinkFetcher(policy=policy, resolver=resolver, **options) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(run())


def fetch_error(url: str, **options: Any) -> str:
    with pytest.raises(LinkError) as caught:
        fetch(url, **options)
    return caught.value.reason


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- SSRF: refused by default, before any connection ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "refusal"),
    [
        ("127.0.0.1", "refused: 127.0.0.1 is a loopback address"),
        ("[::1]", "refused: ::1 is a loopback address"),
        ("169.254.169.254", "refused: 169.254.169.254 is a link-local address"),
        ("10.0.0.5", "refused: 10.0.0.5 is a private address"),
        ("[::ffff:127.0.0.1]", "refused: ::ffff:7f00:1 is an IPv4-mapped address (127.0.0.1 is a loopback"),
        ("[2002:7f00:1::1]", "6to4 address embedding 127.0.0.1, a loopback address"),
        ("[2002:a9fe:a9fe::1]", "6to4 address embedding 169.254.169.254, a link-local"),
        ("2130706433", "2130706433 resolves to 127.0.0.1, which is a loopback"),  # decimal form, via the resolver
        ("metadata.evil.test", "metadata.evil.test resolves to 169.254.169.254, which is a link-local"),
        ("ten.evil.test", "ten.evil.test resolves to 10.1.2.3, which is a private"),
        ("loop6.evil.test", "resolves to ::1, which is a loopback"),
        ("mapped.evil.test", "resolves to ::ffff:7f00:1, which is an IPv4-mapped"),
        ("sixtofour.evil.test", "6to4 address embedding 127.0.0.1"),
        ("nat64.evil.test", "resolves to 64:ff9b::a9fe:a9fe, which is a NAT64 address"),
        ("half.evil.test", "half.evil.test resolves to 127.0.0.1, which is a loopback"),
    ],
)
def test_links_to_internal_addresses_are_refused_without_connecting(origin: Origin, host: str, refusal: str) -> None:
    dns = FakeDNS({**HOSTILE_DNS, "2130706433": ["127.0.0.1"]})
    reason = fetch_error(origin.url("/cat.png", host=host), policy=AddressPolicy(), resolver=dns)
    assert refusal in reason and reason.endswith("set allowPrivateLinks to allow")
    assert origin.hits["/cat.png"] == 0


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "http://metadata.evil.test/latest/meta-data/",
        "http://loop.evil.test:{port}/cat.png",
    ],
)
def test_redirects_to_internal_addresses_are_refused(origin: Origin, target: str) -> None:
    # The first hop is an allowed name; where it redirects to is judged again.
    dns = FakeDNS({**HOSTILE_DNS, "cdn.example.test": ["127.0.0.1"]})
    policy = AddressPolicy(allowed_hosts=frozenset({"cdn.example.test"}))
    url = origin.url("/redirect-to?" + target.format(port=origin.port), host="cdn.example.test")
    assert fetch_error(url, policy=policy, resolver=dns).startswith("refused: ")
    assert origin.hits["/cat.png"] == 0


def test_the_connection_goes_to_the_checked_address_with_the_name_kept(origin: Origin) -> None:
    """One lookup per connection, and it is the one that was checked: nothing left for a rebinding answer."""
    dns = FakeDNS({"cdn.example.test": ["127.0.0.1"]})
    policy = AddressPolicy(allowed_hosts=frozenset({"CDN.example.test"}))
    assert fetch(origin.url("/cat.png", host="cdn.example.test"), policy=policy, resolver=dns) == PNG
    assert dns.lookups == [("cdn.example.test", origin.port)]
    assert origin.seen_hosts == [f"cdn.example.test:{origin.port}"]


def test_international_names_are_checked_and_connected_in_one_encoding(origin: Origin) -> None:
    dns = FakeDNS({"xn--bcher-kva.example": ["127.0.0.1"]})
    policy = AddressPolicy(allowed_hosts=frozenset({"bücher.example"}))
    assert fetch(origin.url("/cat.png", host="BÜCHER.example"), policy=policy, resolver=dns) == PNG
    assert dns.lookups == [("xn--bcher-kva.example", origin.port)]
    refused = fetch_error(origin.url("/cat.png", host="bücher.example"), policy=AddressPolicy(), resolver=dns)
    assert refused.startswith("refused: xn--bcher-kva.example resolves to 127.0.0.1")


def test_no_proxy_is_taken_from_the_environment(origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.setenv("NO_PROXY", "")
    assert fetch(origin.url("/cat.png")) == PNG
    assert origin.hits["/cat.png"] == 1


# --- TLS: pinned to the address, verified for the name ----------------------------------------------------------


def _tls_pair(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


def test_tls_is_verified_for_the_name_while_connecting_to_the_checked_address(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_pair(tmp_path, "images.example.test")
    dns = FakeDNS({"images.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]})
    policy = AddressPolicy(allowed_hosts=frozenset({"images.example.test", "other.example.test"}))

    async def get(url: str) -> bytes:
        async with (
            Outbound(policy, resolver=dns, verify=client_tls) as outbound,
            LinkFetcher(outbound=outbound, max_bytes=CAP) as fetcher,
        ):
            return await fetcher.fetch(url)

    with Origin(tls=server_tls) as origin:
        assert asyncio.run(get(origin.url("/cat.png", host="images.example.test"))) == PNG
        with pytest.raises(LinkError, match="certificate verify failed"):  # same address, another name
            asyncio.run(get(origin.url("/cat.png", host="other.example.test")))


# --- caps ---------------------------------------------------------------------------------------------------------


def test_size_cap_from_content_length_and_while_streaming(origin: Origin) -> None:
    assert "is 1025 bytes, over the 1024-byte limit" in fetch_error(origin.url("/big-announced"))
    assert "over the 1024-byte limit" in fetch_error(origin.url("/big-chunked"))
    assert fetch(origin.url("/exact")) == b"x" * 512 + b"y" * 512


def test_content_encodings_are_decoded_within_the_cap(origin: Origin) -> None:
    assert fetch(origin.url("/cat.png.gz")) == PNG
    assert fetch(origin.url("/cat.png.deflate")) == PNG
    assert fetch_error(origin.url("/cat.png.br")) == "unsupported content encoding br"
    assert "encoded 3 times" in fetch_error(origin.url("/thrice"))


BOMB = gzip_bomb(256 * 1024 * 1024, layers=2)


def test_a_doubly_gzipped_bomb_is_stopped_at_the_cap_without_growing_memory() -> None:
    assert len(BOMB) < 4096  # a few KiB on the wire: 256 MiB once decoded
    bomb_route = {"/bomb": lambda h: reply(h, 200, BOMB, {"Content-Encoding": "gzip, gzip"})}
    with Origin(extra=bomb_route) as origin:
        tracemalloc.start()
        try:
            reason = fetch_error(origin.url("/bomb"), max_bytes=1024 * 1024)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert reason == "the body is over the 1048576-byte limit once decoded"
    assert peak < 8 * 1024 * 1024, f"decoding peaked at {peak} bytes"


def test_many_links_stay_within_the_total_byte_budget(origin: Origin) -> None:
    content = {"init_images": [origin.url(f"/exact?{i}") for i in range(4)]}

    async def run(total: int) -> Any:
        async with LinkFetcher(policy=LOCAL, max_bytes=CAP) as fetcher:
            return await replace_links(content, fetcher.fetch, limits=LinkLimits(max_total_bytes=total))

    with pytest.raises(LinkLimitError, match="over the 3000-byte total limit"):
        asyncio.run(run(3000))
    assert len(asyncio.run(run(4096))["init_images"]) == 4


# --- errors -------------------------------------------------------------------------------------------------------


def test_http_errors_name_the_status(origin: Origin) -> None:
    assert fetch_error(origin.url("/missing.png")) == "HTTP 404 Not Found"
    assert fetch_error(origin.url("/empty")) == "the link points to an empty file"


def test_redirects_are_followed_hop_by_hop(origin: Origin) -> None:
    assert fetch(origin.url("/redirect-to?/cat.png")) == PNG
    assert "too many redirects" in fetch_error(origin.url("/loop"))
    assert origin.hits["/loop"] == 6
    assert "unsupported scheme" in fetch_error(origin.url("/redirect-to?file:///etc/passwd"))


def test_connection_errors_and_timeouts(origin: Origin) -> None:
    assert fetch_error(f"http://127.0.0.1:{closed_port()}/x").startswith("connection failed")
    assert fetch_error(origin.url("/hang"), timeout=0.2) == "read timed out after 0.2s"
    assert fetch_error(origin.url("/hang"), timeout=5, total_timeout=0.2) == "timed out after 0.2s overall"


def test_unresolvable_host() -> None:
    reason = fetch_error("http://nonexistent.invalid/x", policy=AddressPolicy(), resolver=FakeDNS({}))
    assert reason.startswith("cannot resolve host 'nonexistent.invalid'")


# --- s3 -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> S3Client:
    client = make_s3_client(S3Settings(s3_endpoint, "us-east-1", "testing", "testing"))
    for bucket in ("inputs", "payroll"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="inputs", Key="masks/mask.png", Body=PNG)
    client.put_object(Bucket="inputs", Key="big.bin", Body=b"x" * (CAP + 1))
    client.put_object(Bucket="payroll", Key="2026.csv", Body=b"secret")
    return client


def s3_fetch(url: str, s3: S3Client, prefixes: tuple[str, ...] = ("s3://inputs/",)) -> bytes:
    return fetch(url, s3_client_factory=lambda: s3, s3_prefixes=prefixes)


def test_s3_links_use_the_configured_endpoint_within_the_allowed_prefixes(s3: S3Client) -> None:
    assert s3_fetch("s3://inputs/masks/mask.png", s3) == PNG
    with pytest.raises(LinkError, match=r"refused: s3://payroll/2026.csv is outside the runtime's allowed S3"):
        s3_fetch("s3://payroll/2026.csv", s3)
    with pytest.raises(LinkError, match=r"outside the runtime's allowed S3 prefixes \(none\)"):
        s3_fetch("s3://inputs/masks/mask.png", s3, prefixes=())


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("s3://inputs/nope.png", "no such key"),
        ("s3://inputs/big.bin", "s3://inputs/big.bin is 1025 bytes, over the 1024-byte limit"),
        ("s3://inputs", "no object key"),
    ],
)
def test_s3_errors(s3: S3Client, url: str, reason: str) -> None:
    with pytest.raises(LinkError) as caught:
        s3_fetch(url, s3)
    assert reason in caught.value.reason


def test_s3_links_share_the_task_budget(s3: S3Client) -> None:
    async def run() -> None:
        async with LinkFetcher(s3_client_factory=lambda: s3, s3_prefixes=("s3://inputs/",), max_bytes=CAP) as f:
            budget = ByteBudget(len(PNG) + 10)
            await f.fetch("s3://inputs/masks/mask.png", budget)
            await f.fetch("s3://inputs/masks/mask.png", budget)

    with pytest.raises(LinkLimitError, match="total limit"):
        asyncio.run(run())


def test_s3_links_need_a_client() -> None:
    assert fetch_error("s3://inputs/masks/mask.png", s3_prefixes=("s3://inputs",)) == (
        "s3 links are not enabled (no S3 client configured)"
    )


# --- inline_links: a task's links fetched once each, concurrently, within the task's limits --------------------


def test_replace_links_fetches_each_url_once_and_does_not_mutate() -> None:
    content = content_with_links()
    original = content_with_links()
    calls: Counter[str] = Counter()

    async def fetch(url: str, budget: ByteBudget) -> bytes:
        calls[url] += 1
        return url.encode()

    result = asyncio.run(replace_links(content, fetch))

    assert content == original
    assert calls == Counter({url: 1 for url in {ref.url for ref in find_links(original)}})
    args = result["alwayson_scripts"]["controlnet"]["args"]
    assert args[0]["image"]["image"] == b64(b"https://example.com/pose.png")
    assert args[1]["input_image"] == result["init_images"][0] == b64(b"https://example.com/cat.png")
    assert args[1]["ad_prompt"] == "https://example.com/p.png"
    assert result["init_images"][1] == "aGVsbG8="
    assert result["mask"] == b64(b"s3://bucket/mask.png")
    assert result["imageList"][0] == {"data": b64(b"https://example.com/a.png"), "name": "a"}
    assert result["prompt"] == original["prompt"] and result["negative_prompt"] == "http is great"
    assert result["steps"] == 20


def test_replace_links_bounds_concurrency() -> None:
    content = {"init_images": [f"https://example.com/{i}.png" for i in range(10)]}
    in_flight = 0
    peak = 0

    async def fetch(url: str, budget: ByteBudget) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)  # yield so the others get their chance to start
        in_flight -= 1
        return b"x"

    asyncio.run(replace_links(content, fetch, max_concurrency=3))
    assert peak == 3


def test_replace_links_without_links_is_a_plain_copy() -> None:
    content = {"prompt": "a cat", "nested": [{"a": 1}]}

    async def fetch(url: str, budget: ByteBudget) -> bytes:
        raise AssertionError("nothing to fetch")

    result = asyncio.run(replace_links(content, fetch))
    assert result == content and result["nested"] is not content["nested"]


def test_first_failure_is_a_link_error_and_cancels_the_rest() -> None:
    content = {"init_images": ["https://example.com/bad.png", "https://example.com/slow.png"]}
    slow_cancelled = False

    async def fetch(url: str, budget: ByteBudget) -> bytes:
        nonlocal slow_cancelled
        if url.endswith("bad.png"):
            raise LinkError(url, "HTTP 404 Not Found")
        try:
            await asyncio.Event().wait()  # never set: only cancellation ends it
        except asyncio.CancelledError:
            slow_cancelled = True
            raise
        return b""

    with pytest.raises(LinkError) as caught:
        asyncio.run(replace_links(content, fetch))
    assert str(caught.value) == "cannot fetch https://example.com/bad.png: HTTP 404 Not Found"
    assert slow_cancelled


def test_unexpected_fetch_errors_become_link_errors() -> None:
    async def fetch(url: str, budget: ByteBudget) -> bytes:
        raise RuntimeError("disk full")

    with pytest.raises(LinkError, match=r"cannot fetch s3://b/k: RuntimeError: disk full"):
        asyncio.run(replace_links({"mask": "s3://b/k"}, fetch))


async def _charging_fetch(url: str, budget: ByteBudget) -> bytes:
    data = b"x" * 600
    for _start in range(0, len(data), 100):
        budget.take(100)  # as a streaming fetcher does, piece by piece
    return data


def test_link_count_is_capped_before_anything_is_fetched() -> None:
    content = {"init_images": [f"https://example.com/{i}.png" for i in range(17)]}
    fetched: list[str] = []

    async def fetch(url: str, budget: ByteBudget) -> bytes:
        fetched.append(url)
        return b"x"

    with pytest.raises(LinkLimitError) as caught:
        asyncio.run(replace_links(content, fetch, limits=LinkLimits(max_links=16)))
    assert str(caught.value) == "the task has 17 links, over the limit of 16"
    assert fetched == []
    same_url_twice = {"init_images": ["https://example.com/a.png"] * 40}
    assert asyncio.run(replace_links(same_url_twice, fetch, limits=LinkLimits(max_links=1)))


def test_total_bytes_are_capped_while_downloading() -> None:
    content = {"init_images": [f"https://example.com/{i}.png" for i in range(3)]}
    with pytest.raises(LinkLimitError, match=r"over the 1000-byte total limit"):
        asyncio.run(replace_links(content, _charging_fetch, limits=LinkLimits(max_total_bytes=1000)))
    assert asyncio.run(replace_links(content, _charging_fetch, limits=LinkLimits(max_total_bytes=1800)))

    async def uncharging(url: str, budget: ByteBudget) -> bytes:
        return b"x" * 600

    with pytest.raises(LinkLimitError, match=r"over the 1000-byte total limit"):  # the backstop
        asyncio.run(replace_links(content, uncharging, limits=LinkLimits(max_total_bytes=1000)))


def test_the_link_phase_lives_within_its_time_budget() -> None:
    content = {"init_images": [f"https://example.com/{i}.png" for i in range(20)]}

    async def slow(url: str, budget: ByteBudget) -> bytes:
        await asyncio.sleep(0.05)  # each link within any per-link timeout; together they are too slow
        return b"x"

    with pytest.raises(LinkLimitError) as caught:
        asyncio.run(replace_links(content, slow, limits=LinkLimits(max_links=20, seconds=0.12), max_concurrency=1))
    assert str(caught.value) == "fetching the task's links took longer than 0.12s in all"


def test_inlined_link_data_is_taken_out_of_what_is_stored() -> None:
    secret = b"\x89PNG other team's image"
    content = {"init_images": ["s3://inputs/cat.png?x=1", "aGVsbG8="], "mask": "https://example.com/m.png?sig=abc"}

    async def fetch(url: str, budget: ByteBudget) -> bytes:
        return secret if url.startswith("s3") else b"mask bytes"

    inlined = asyncio.run(inline_links(content, fetch))
    data = b64(secret)
    assert inlined.content["init_images"][0] == data
    # What the Web UI echoes in `parameters`, in the forms it may take:
    echo = {
        "init_images": [data, "aGVsbG8="],
        "mask": b64(b"mask bytes"),
        "alwayson_scripts": {"controlnet": {"args": [{"image": f"data:image/png;base64,{data}"}]}},
        "steps": 20,
    }
    stored = restore_links(echo, inlined.sources)
    text = repr(stored)
    assert data not in text and b64(b"mask bytes") not in text
    assert stored["init_images"] == ["s3://inputs/cat.png?x=1", "aGVsbG8="]  # the author's own inline data stays
    assert stored["mask"] == "https://example.com/m.png?sig=***"  # signatures are secrets
    assert (
        stored["alwayson_scripts"]["controlnet"]["args"][0]["image"] == "data:image/png;base64,s3://inputs/cat.png?x=1"
    )
    assert stored["steps"] == 20
    assert restore_links(echo, {}) is echo
