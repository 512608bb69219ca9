"""Links: detection, the address policy, redaction and the S3 allow-list (all pure; fetching them within the task's
limits, `inline_links`, is tested in test_fetcher.py)."""

from __future__ import annotations

import ipaddress

import pytest

from sdtask.addresses import AddressPolicy, address_refusal, canonical_host
from sdtask.links import (
    LinkError,
    LinkRef,
    find_links,
    is_link,
    redact_url,
    s3_link_refusal,
)
from tests.links_content import content_with_links

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


# --- find_links ----------------------------------------------------------------------------------------------


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
