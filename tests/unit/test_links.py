"""Links: detection, replacement by base64 within the task's limits, taking inlined data out again, the address
policy and the S3 allow-list (all pure; the fetchers are tested in test_fetcher.py)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections import Counter
from typing import Any

import pytest

from sdtask.addresses import AddressPolicy, address_refusal, canonical_host
from sdtask.clients.fetcher import inline_links, replace_links
from sdtask.links import (
    ByteBudget,
    LinkError,
    LinkLimitError,
    LinkLimits,
    LinkRef,
    find_links,
    is_link,
    redact_url,
    restore_links,
    s3_link_refusal,
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
        ("::ffff:10.0.0.5", "IPv4-mapped"),
        ("::ffff:127.0.0.1", "127.0.0.1 is a loopback"),
        ("::ffff:8.8.8.8", "IPv4-mapped"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("2002:7f00:1::1", "6to4 address embedding 127.0.0.1, a loopback"),
        ("2002:a9fe:a9fe::", "6to4 address embedding 169.254.169.254, a link-local"),
        ("2002:0a00:0005::1", "6to4 address embedding 10.0.0.5, a private"),
        ("64:ff9b::a9fe:a9fe", "NAT64"),
        ("64:ff9b:1::1", "local NAT64"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("fec0::1", "site-local"),
        ("fd00::1", "unique local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("192.0.2.1", "private"),
        ("198.18.0.1", "private"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_refused_addresses(address: str, kind: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None and kind in refusal


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "2002:808:808::1"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None



def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    policy = AddressPolicy()
    public, private = ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.1.2.3")
    assert policy.refusal("images.example.com", [public]) is None
    refusal = policy.refusal("rebind.example.com", [public, private])
    assert refusal == (
        "refused: rebind.example.com resolves to 10.1.2.3, which is a private address; set allowPrivateLinks to allow"
    )
    assert policy.refusal("10.1.2.3", [private]) == (
        "refused: 10.1.2.3 is a private address; set allowPrivateLinks to allow"
    )
    assert policy.refusal("empty.example.com", []) == "host 'empty.example.com' has no address"


def test_allowed_hosts_are_compared_in_the_wire_encoding() -> None:
    loopback = [ipaddress.ip_address("127.0.0.1")]
    policy = AddressPolicy(allowed_hosts=frozenset({"Bücher.Example.", "[::1]"}), setting="allowPrivateCallbacks")
    assert canonical_host("BÜCHER.example") == "xn--bcher-kva.example"
    assert policy.refusal("xn--bcher-kva.example", loopback) is None  # what the HTTP client connects to
    assert policy.refusal("bücher.example", loopback) is None
    assert policy.refusal("::1", [ipaddress.ip_address("::1")]) is None
    assert "set allowPrivateCallbacks to allow" in (policy.refusal("buecher.example", loopback) or "")
    assert AddressPolicy(allow_private=True).refusal("anything", loopback) is None


# --- limits of a task's links -------------------------------------------------------------------------------------


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
    assert stored["alwayson_scripts"]["controlnet"]["args"][0]["image"] == "data:image/png;base64,s3://inputs/cat.png?x=1"
    assert stored["steps"] == 20
    assert restore_links(echo, {}) is echo


# --- the S3 allow-list --------------------------------------------------------------------------------------------


def test_s3_links_are_read_only_under_allowed_prefixes() -> None:
    allowed = ("s3://inputs/shared/", "s3://sdtask-outputs", "s3://models/sd/")
    assert s3_link_refusal("inputs", "shared/cat.png", allowed) is None
    assert s3_link_refusal("sdtask-outputs", "in/cat.png", allowed) is None
    assert s3_link_refusal("models", "sd/v1-5.safetensors", allowed) is None
    refusal = s3_link_refusal("inputs", "private/payroll.csv", allowed)
    assert refusal is not None and refusal.startswith("refused: s3://inputs/private/payroll.csv is outside")
    assert s3_link_refusal("inputs-2", "shared/cat.png", allowed) is not None  # bucket names match whole
    assert "(none)" in (s3_link_refusal("inputs", "shared/cat.png", ()) or "")
