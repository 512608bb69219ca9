"""Property-based tests (hypothesis): hostile input, generated, against the pure decisions that face it first.

The same strategies (`hostile_tasks`) are meant for the fault suite on the real stack, where each generated task must
be refused by the API server or end Failed with a reason while good tasks alongside succeed.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sdtask.addresses import AddressPolicy, address_refusal, canonical_host
from sdtask.controller.admission import Admitted, Rejected, admit
from sdtask.links import restore_links
from sdtask.nesting import MAX_CONTENT_DEPTH, depth_exceeds
from sdtask.routing import RuntimeInfo

RUNTIMES = [RuntimeInfo("sdruntime", dynamic=False, checkpoint="v1-5.safetensors")]

non_public_v4 = st.one_of(
    st.ip_addresses(v=4, network="127.0.0.0/8"),
    st.ip_addresses(v=4, network="10.0.0.0/8"),
    st.ip_addresses(v=4, network="172.16.0.0/12"),
    st.ip_addresses(v=4, network="192.168.0.0/16"),
    st.ip_addresses(v=4, network="169.254.0.0/16"),
    st.ip_addresses(v=4, network="100.64.0.0/10"),
    st.ip_addresses(v=4, network="0.0.0.0/8"),
    st.ip_addresses(v=4, network="224.0.0.0/4"),
    st.ip_addresses(v=4, network="240.0.0.0/4"),
)


def embeddings(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """The IPv6 forms that carry an IPv4 address to it."""
    number = int(v4)
    return [
        ipaddress.IPv6Address((0xFFFF << 32) | number),  # IPv4-mapped
        ipaddress.IPv6Address(number) if number > 1 else ipaddress.IPv6Address("::2"),  # IPv4-compatible
        ipaddress.IPv6Address((0x2002 << 112) | (number << 80) | 1),  # 6to4
        ipaddress.IPv6Address((0x0064FF9B << 96) | number),  # NAT64
    ]


@given(non_public_v4)
def test_no_spelling_of_a_non_public_ipv4_address_passes(v4: ipaddress.IPv4Address) -> None:
    assert address_refusal(v4) is not None
    for v6 in embeddings(v4):
        assert address_refusal(v6) is not None, v6
    policy = AddressPolicy()
    assert policy.refusal("name.example", [ipaddress.ip_address("93.184.216.34"), v4]) is not None


@given(
    st.ip_addresses(v=6, network="fc00::/7")
    | st.ip_addresses(v=6, network="fec0::/10")
    | st.ip_addresses(v=6, network="fe80::/10")
    | st.ip_addresses(v=6, network="2001::/32")
)
def test_local_ipv6_ranges_are_refused(address: ipaddress.IPv6Address) -> None:
    assert address_refusal(address) is not None


@given(st.text(min_size=1, max_size=60))
def test_host_encoding_is_stable(host: str) -> None:
    try:
        once = canonical_host(host)
    except ValueError:
        return
    assert canonical_host(once) == once and once.isascii()


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(
        [
            "http://169.254.169.254/latest/meta-data/",
            "s3://payroll/2026.csv",
            "http://[::1]/x",
            "https://" + "a" * 300 + ".example/x.png",
            "file:///etc/passwd",
        ]
    ),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=40,
)


@st.composite
def hostile_tasks(draw: st.DrawFn) -> dict[str, Any]:
    """Odd types, nesting, huge strings, many links, hostile URLs: the spec of an SDTask an attacker might send."""
    content = draw(st.dictionaries(st.text(max_size=20), json_values, max_size=6))
    if draw(st.booleans()):
        deep: Any = draw(json_leaf)
        for _ in range(draw(st.integers(0, 3 * MAX_CONTENT_DEPTH))):
            deep = [deep] if draw(st.booleans()) else {"k": deep}
        content["nested"] = deep
    if draw(st.booleans()):
        content["init_images"] = [f"http://10.{i % 256}.0.1/{i}.png" for i in range(draw(st.integers(0, 500)))]
    metadata = draw(st.dictionaries(st.sampled_from(["id", "runtime", "tasktype", "prefix", "context"]), json_values))
    task: Any = {"metadata": metadata, "content": content}
    if draw(st.integers(0, 9)) == 0:
        task = draw(json_values)  # not even an object
    return {"task": task}


@settings(max_examples=300, deadline=None)
@given(hostile_tasks())
def test_admission_decides_every_hostile_task_without_raising(spec: dict[str, Any]) -> None:
    decision = admit(spec, RUNTIMES)
    assert isinstance(decision, Admitted | Rejected)
    content = spec["task"].get("content") if isinstance(spec["task"], dict) else None
    if isinstance(decision, Admitted):
        assert isinstance(content, dict) and not depth_exceeds(content)
    else:
        assert decision.reason and decision.message
    if isinstance(content, dict) and depth_exceeds(content):
        assert isinstance(decision, Rejected) and decision.reason == "ContentTooDeep"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


inlined_data = st.binary(min_size=3, max_size=30).map(lambda data: base64.b64encode(data).decode() + "==")


@settings(max_examples=200, deadline=None)
@given(json_values, st.lists(inlined_data, min_size=1, max_size=3), st.randoms())
def test_restoring_links_leaves_no_inlined_data(value: Any, blobs: list[str], rng: Any) -> None:
    """Wherever the Web UI's echo carries an inlined input (whole, or inside a data: URI), none of it is stored."""
    sources = {blob: f"s3://inputs/{index}.png" for index, blob in enumerate(blobs)}
    echo = {"parameters": value, "init_images": [rng.choice(blobs)], "mask": "data:image/png;base64," + blobs[0]}
    restored = restore_links(echo, sources)
    for text in _strings(restored):
        assert not any(blob in text for blob in blobs), text
    assert restored["init_images"][0].startswith("s3://inputs/")
