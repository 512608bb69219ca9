"""Links: detection, replacement by base64, and the real fetchers against local servers (http.server, moto)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sdtask.clients.s3 import S3Client, S3Settings, make_s3_client
from sdtask.links import (
    LinkError,
    LinkFetcher,
    LinkRef,
    address_refusal,
    find_links,
    is_link,
    redact_url,
    replace_links,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"cat" * 10
CAP = 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- is_link ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "https://example.com/cat.png",
        "http://example.com",
        "  https://example.com/a.png?x=1  ",
        "HTTPS://EXAMPLE.COM/CAT.PNG",
        "http://10.0.0.5:8080/x",
        "http://[::1]/x",
        "s3://bucket/key.png",
        "s3://bucket",
    ],
)
def test_links(value: str) -> None:
    assert is_link(value)


@pytest.mark.parametrize(
    "value",
    [
        "http is great, a cat",
        "https://example.com/cat.png a wizard cat",
        "a cat, https://example.com/cat.png",
        "http://",
        "https:example.com/cat.png",
        "https:///cat.png",
        "s3://",
        "ftp://example.com/cat.png",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
        "http://[::1/x",
        "",
        "https://" + "a" * 9000 + ".com",
    ],
)
def test_not_links(value: str) -> None:
    assert not is_link(value)


def test_non_strings_are_not_links() -> None:
    assert not is_link(None) and not is_link(42) and not is_link(["https://example.com/x"])


# --- find_links / replace_links ---------------------------------------------------------------------------------


def content_with_links() -> dict[str, Any]:
    return {
        "prompt": "https://example.com/prompt-that-is-a-url.png",
        "negative_prompt": "http is great",
        "init_images": ["https://example.com/cat.png", "aGVsbG8="],
        "mask": "s3://bucket/mask.png",
        "alwayson_scripts": {
            "controlnet": {
                "args": [
                    {"enabled": True, "image": {"image": "https://example.com/pose.png", "mask": None}},
                    {"input_image": "https://example.com/cat.png", "ad_prompt": "https://example.com/p.png"},
                ]
            },
            "image_link": "https://example.com/legacy.png",
        },
        "imageList": [{"data": "https://example.com/a.png", "name": "a"}],
        "steps": 20,
    }


def test_find_links_walks_everything_but_prompts() -> None:
    assert find_links(content_with_links()) == [
        LinkRef(("init_images", 0), "https://example.com/cat.png"),
        LinkRef(("mask",), "s3://bucket/mask.png"),
        LinkRef(("alwayson_scripts", "controlnet", "args", 0, "image", "image"), "https://example.com/pose.png"),
        LinkRef(("alwayson_scripts", "controlnet", "args", 1, "input_image"), "https://example.com/cat.png"),
        LinkRef(("alwayson_scripts", "image_link"), "https://example.com/legacy.png"),
        LinkRef(("imageList", 0, "data"), "https://example.com/a.png"),
    ]
    assert find_links(content_with_links())[2].location == "alwayson_scripts.controlnet.args[0].image.image"
    assert find_links("https://example.com/x")[0].location == "$"


def test_replace_links_fetches_each_url_once_and_does_not_mutate() -> None:
    content = content_with_links()
    original = content_with_links()
    calls: Counter[str] = Counter()

    async def fetch(url: str) -> bytes:
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

    async def fetch(url: str) -> bytes:
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

    async def fetch(url: str) -> bytes:
        raise AssertionError("nothing to fetch")

    result = asyncio.run(replace_links(content, fetch))
    assert result == content and result["nested"] is not content["nested"]


def test_first_failure_is_a_link_error_and_cancels_the_rest() -> None:
    content = {"init_images": ["https://example.com/bad.png", "https://example.com/slow.png"]}
    slow_cancelled = False

    async def fetch(url: str) -> bytes:
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
    async def fetch(url: str) -> bytes:
        raise RuntimeError("disk full")

    with pytest.raises(LinkError, match=r"cannot fetch s3://b/k: RuntimeError: disk full"):
        asyncio.run(replace_links({"mask": "s3://b/k"}, fetch))


def test_error_text_masks_credentials_and_query_values() -> None:
    url = "https://user:secret@example.com:8443/cat.png?X-Amz-Signature=abc123&size=1#frag"
    assert redact_url(url) == "https://example.com:8443/cat.png?X-Amz-Signature=***&size=***"
    text = str(LinkError(url, "HTTP 403 Forbidden"))
    assert "secret" not in text and "abc123" not in text and "example.com:8443/cat.png" in text


# --- address policy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::ffff:10.0.0.5", "private"),
        ("100.64.0.1", "non-public"),
    ],
)
def test_refused_addresses(address: str, kind: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None and kind in refusal


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_private_literals_are_refused_without_connecting() -> None:
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=PNG)

    async def attempt(url: str) -> str:
        async with LinkFetcher(http_transport=httpx.MockTransport(record)) as fetcher:
            with pytest.raises(LinkError) as caught:
                await fetcher.fetch(url)
            return str(caught.value)

    metadata = asyncio.run(attempt("http://169.254.169.254/latest/meta-data/"))
    assert "refused: 169.254.169.254 is a link-local address" in metadata
    private = asyncio.run(attempt("http://10.0.0.5/cat.png"))
    assert private.endswith("refused: 10.0.0.5 is a private address; set allowPrivateLinks to allow")
    assert "fe80::1 is a link-local" in asyncio.run(attempt("https://[fe80::1]/x"))
    assert requests == []


def test_a_resolved_name_is_pinned_to_the_checked_address() -> None:
    """The connection goes to the address that passed the policy (no second lookup an attacker could rebind), while
    the Host header and the TLS name stay the URL's."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG)

    async def resolver(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        assert (host, port) == ("images.example.com", 443)
        return [ipaddress.ip_address("93.184.216.34")]

    async def run() -> bytes:
        transport = httpx.MockTransport(record)
        async with LinkFetcher(http_transport=transport, resolver=resolver) as fetcher:
            return await fetcher.fetch("https://images.example.com/cat.png?v=1")

    assert asyncio.run(run()) == PNG
    (request,) = seen
    assert str(request.url) == "https://93.184.216.34/cat.png?v=1"
    assert request.headers["Host"] == "images.example.com"
    assert request.extensions["sni_hostname"] == "images.example.com"


def test_a_name_with_any_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.1.2.3")]

    async def run() -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(200))
        async with LinkFetcher(http_transport=transport, resolver=resolver) as fetcher:
            await fetcher.fetch("http://rebind.example.com/x")

    with pytest.raises(LinkError, match=r"refused: rebind.example.com resolves to 10.1.2.3, which is a private"):
        asyncio.run(run())


# --- LinkFetcher over http --------------------------------------------------------------------------------------


class Origin:
    """A local web server; counts hits per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()
        handler = self._handler_class()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                origin.hits[self.path] += 1
                origin.route(self)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def route(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        if path == "/cat.png":
            _reply(handler, 200, PNG, {"Content-Type": "image/png"})
        elif path == "/empty":
            _reply(handler, 200, b"")
        elif path == "/big-announced":
            _reply(handler, 200, b"x" * (CAP + 1))
        elif path == "/big-chunked":
            _send_chunked(handler, [b"x" * 512] * 4)
        elif path == "/exact":
            _send_chunked(handler, [b"x" * 512, b"y" * 512])
        elif path.startswith("/redirect-to?"):
            _reply(handler, 302, b"", {"Location": path.split("?", 1)[1]})
        elif path == "/loop":
            _reply(handler, 307, b"", {"Location": "/loop"})
        elif path == "/hang":
            self.release.wait(timeout=10)  # released at teardown: the client gives up first
            _reply(handler, 200, PNG)
        else:
            _reply(handler, 404, b"not here")


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _send_chunked(handler: BaseHTTPRequestHandler, chunks: list[bytes]) -> None:
    """No Content-Length: only counting while reading can enforce the cap."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    try:
        for chunk in chunks:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client hung up once over the cap


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    server.thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


def fetch(url: str, **options: Any) -> bytes:
    async def run() -> bytes:
        async with LinkFetcher(max_bytes=CAP, **options) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(run())


def fetch_error(url: str, **options: Any) -> str:
    with pytest.raises(LinkError) as caught:
        fetch(url, **options)
    return caught.value.reason


def closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LOCAL: dict[str, Any] = {"allowed_hosts": frozenset({"127.0.0.1"})}


def test_fetches_an_allowed_host(origin: Origin) -> None:
    assert fetch(origin.url("/cat.png"), **LOCAL) == PNG
    assert fetch(origin.url("/cat.png"), allow_private=True) == PNG


def test_loopback_is_refused_by_default_without_connecting(origin: Origin) -> None:
    reason = fetch_error(origin.url("/cat.png"))
    assert reason == "refused: 127.0.0.1 is a loopback address; set allowPrivateLinks to allow"
    by_name = fetch_error(origin.url("/cat.png", host="localhost"))
    assert by_name.startswith("refused: localhost resolves to ") and "loopback" in by_name
    assert origin.hits["/cat.png"] == 0


def test_allowed_host_names_are_matched_case_insensitively(origin: Origin) -> None:
    assert fetch(origin.url("/cat.png", host="LocalHost"), allowed_hosts=frozenset({"localhost."})) == PNG


def test_size_cap_from_content_length_and_while_streaming(origin: Origin) -> None:
    assert "is 1025 bytes, over the 1024-byte limit" in fetch_error(origin.url("/big-announced"), **LOCAL)
    assert "over the 1024-byte limit" in fetch_error(origin.url("/big-chunked"), **LOCAL)
    assert fetch(origin.url("/exact"), **LOCAL) == b"x" * 512 + b"y" * 512


def test_http_errors_name_the_status(origin: Origin) -> None:
    assert fetch_error(origin.url("/missing.png"), **LOCAL) == "HTTP 404 Not Found"
    assert fetch_error(origin.url("/empty"), **LOCAL) == "the link points to an empty file"


def test_redirects_are_followed_and_every_hop_is_checked(origin: Origin) -> None:
    assert fetch(origin.url("/redirect-to?/cat.png"), **LOCAL) == PNG
    assert "too many redirects" in fetch_error(origin.url("/loop"), **LOCAL)
    assert origin.hits["/loop"] == 6
    metadata = fetch_error(origin.url("/redirect-to?http://169.254.169.254/latest/meta-data/"), **LOCAL)
    assert metadata.startswith("refused: 169.254.169.254 is a link-local address")
    renamed = fetch_error(origin.url(f"/redirect-to?http://localhost:{origin.port}/cat.png"), **LOCAL)
    assert renamed.startswith("refused: localhost resolves to")
    assert "unsupported scheme" in fetch_error(origin.url("/redirect-to?file:///etc/passwd"), **LOCAL)
    assert origin.hits["/cat.png"] == 1


def test_connection_errors_and_timeouts(origin: Origin) -> None:
    assert fetch_error(f"http://127.0.0.1:{closed_port()}/x", **LOCAL).startswith("connection failed")
    assert fetch_error(origin.url("/hang"), timeout=0.2, **LOCAL) == "read timed out after 0.2s"
    assert fetch_error(origin.url("/hang"), timeout=5, total_timeout=0.2, **LOCAL) == "timed out after 0.2s overall"


def test_unresolvable_host() -> None:
    assert fetch_error("http://nonexistent.invalid/x").startswith("cannot resolve host 'nonexistent.invalid'")


# --- LinkFetcher over s3 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> S3Client:
    client = make_s3_client(S3Settings(s3_endpoint, "us-east-1", "testing", "testing"))
    client.create_bucket(Bucket="inputs")
    client.put_object(Bucket="inputs", Key="masks/mask.png", Body=PNG)
    client.put_object(Bucket="inputs", Key="big.bin", Body=b"x" * (CAP + 1))
    return client


def test_s3_links_use_the_configured_endpoint_even_on_loopback(s3: S3Client) -> None:
    assert fetch("s3://inputs/masks/mask.png", s3_client_factory=lambda: s3) == PNG


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("s3://inputs/nope.png", "no such key"),
        ("s3://no-such-bucket/x.png", "no such bucket"),
        ("s3://inputs/big.bin", "s3://inputs/big.bin is 1025 bytes, over the 1024-byte limit"),
        ("s3://inputs", "no object key"),
    ],
)
def test_s3_errors(s3: S3Client, url: str, reason: str) -> None:
    assert reason in fetch_error(url, s3_client_factory=lambda: s3)


def test_s3_endpoint_down() -> None:
    settings = S3Settings(f"http://127.0.0.1:{closed_port()}", "us-east-1", "testing", "testing", max_attempts=1)
    reason = fetch_error("s3://inputs/masks/mask.png", s3_client_factory=lambda: make_s3_client(settings))
    assert reason.startswith("S3 unreachable or misconfigured: Could not connect to the endpoint URL")


def test_s3_links_need_a_client() -> None:
    assert fetch_error("s3://inputs/masks/mask.png") == "s3 links are not enabled (no S3 client configured)"

    def broken_factory() -> S3Client:
        raise ValueError("Invalid endpoint: htp:/nope")

    reason = fetch_error("s3://inputs/masks/mask.png", s3_client_factory=broken_factory)
    assert reason == "ValueError: Invalid endpoint: htp:/nope"


def test_replace_links_end_to_end(origin: Origin, s3: S3Client) -> None:
    content = {
        "init_images": [origin.url("/cat.png")],
        "alwayson_scripts": {
            "controlnet": {"args": [{"image": origin.url("/cat.png"), "mask": "s3://inputs/masks/mask.png"}]}
        },
    }

    async def run() -> Any:
        async with LinkFetcher(s3_client_factory=lambda: s3, **LOCAL) as fetcher:
            return await replace_links(content, fetcher.fetch)

    result = asyncio.run(run())
    assert result["init_images"] == [b64(PNG)]
    assert result["alwayson_scripts"]["controlnet"]["args"][0] == {"image": b64(PNG), "mask": b64(PNG)}
    assert origin.hits["/cat.png"] == 1
