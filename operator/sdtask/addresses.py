"""The address policy of every outbound request (links and callbacks). Pure.

A task's author picks the URLs; the agent and the operator connect from inside the cluster. Without this policy a link
or a callback could read the cloud metadata service (169.254.169.254), an in-cluster service or the pod's own Web UI.
The policy judges the addresses a host name resolves to, not the name: the connection code (`clients/outbound.py`)
resolves once, asks here about EVERY address, and connects to a checked one.

Host names are compared in one encoding, `canonical_host` (IDNA for international names, the encoding the HTTP client
puts on the wire), so a name can't pass the allow-list in one spelling and be connected to in another.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry or reach IPv4 (or old local scopes) which Python's `is_global` lets through. Each is refused
# outright unless allowed: a connection there may end up at an address the policy never saw.
_TRANSITION_NETWORKS: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "an IPv4-mapped address"),
    (ipaddress.IPv6Network("::/96"), "an IPv4-compatible address"),
    (ipaddress.IPv6Network("64:ff9b::/96"), "a NAT64 address"),
    (ipaddress.IPv6Network("64:ff9b:1::/48"), "a local NAT64 address"),
    (ipaddress.IPv6Network("2001::/32"), "a Teredo address"),
    (ipaddress.IPv6Network("fec0::/10"), "a site-local address"),
    (ipaddress.IPv6Network("fc00::/7"), "a unique local (private) address"),
)
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


def address_refusal(address: IPAddress) -> str | None:
    """Why a connection to `address` is refused by default ("a loopback address", ...), or None for a public one."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address):
        for network, kind in _TRANSITION_NETWORKS:
            if address in network:
                embedded = address.ipv4_mapped
                inner = address_refusal(embedded) if embedded is not None else None
                return f"{kind} ({embedded} is {inner})" if inner else kind
        if address in _SIX_TO_FOUR and address.sixtofour is not None:
            inner = address_refusal(address.sixtofour)
            if inner:  # a 6to4 relay would deliver it to that IPv4 address
                return f"a 6to4 address embedding {address.sixtofour}, {inner}"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a carrier-grade NAT address"
    if not address.is_global:  # documentation ranges, benchmarking, ...
        return "a non-public address"
    return None


def canonical_host(host: str) -> str:
    """The host as the HTTP client sends it: lower case, IDNA-encoded (UTS 46), no brackets, no trailing dot.

    The same function the connection uses (httpx encodes with `idna` too), so allow-list and connection agree.
    Raises ValueError for a name IDNA can't encode.
    """
    text = host.strip().removeprefix("[").removesuffix("]").rstrip(".")
    if text.isascii():
        return text.lower()
    try:
        return idna.encode(text.lower(), uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"invalid international host name {host!r}: {error}") from None


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip().removeprefix("[").removesuffix("]").split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class AddressPolicy:
    """Who may be connected to: public addresses always; others only when allowed.

    `allow_private` lifts the policy; `allowed_hosts` lists names (or literal addresses) exempt from it, compared in
    `canonical_host` form. `setting` names what an operator sets to allow more, for the refusal message.
    """

    allow_private: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    setting: str = "allowPrivateLinks"

    def __post_init__(self) -> None:
        hosts = set()
        for host in self.allowed_hosts:
            try:
                hosts.add(canonical_host(host))
            except ValueError:
                continue  # an unencodable name can never be connected to either
        object.__setattr__(self, "allowed_hosts", frozenset(hosts))

    def exempt(self, host: str) -> bool:
        if self.allow_private:
            return True
        try:
            return canonical_host(host) in self.allowed_hosts
        except ValueError:
            return False

    def refusal(self, host: str, addresses: list[IPAddress]) -> str | None:
        """Why connecting to `host` (resolved to `addresses`) is refused, or None. Every address must pass: a name
        with one public and one private answer is refused, the client might use either."""
        if self.exempt(host):
            return None
        if not addresses:
            return f"host {host!r} has no address"
        for address in addresses:
            kind = address_refusal(address)
            if kind is not None:
                same = literal_address(host) == address
                subject = str(address) if same else f"{host} resolves to {address}, which"
                return f"refused: {subject} is {kind}; set {self.setting} to allow"
        return None
