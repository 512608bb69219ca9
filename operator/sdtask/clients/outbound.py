"""The one implementation of every outbound HTTP request a task causes (input links, callbacks).

What a request to a URL the task's author chose gets here, and nowhere else:
- the host is resolved once, EVERY address is judged by the address policy (`sdtask.addresses`), and the connection
  goes to a checked address (no second lookup a DNS-rebinding server could answer differently). The pinning happens
  in the connection layer (a network backend of httpcore), so the Host header, TLS SNI and certificate verification
  stay those of the name in the URL;
- no proxy from the environment (`HTTP(S)_PROXY` would connect somewhere the policy never judged);
- one encoding of international names: httpx's (IDNA via `idna`), which is also what the policy compares;
- redirects followed by hand, each hop's connection checked again, a bounded number of hops;
- one time limit for the whole request (all hops, DNS, body) and per-phase timeouts;
- a byte cap counted AFTER decoding: content encodings are decoded here, layer by layer, in bounded pieces, so a few
  KiB of nested gzip can't expand into gigabytes before anything counts them (httpx's own decoders inflate a chunk
  in one go). Unknown encodings are refused.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from sdtask.addresses import AddressPolicy, IPAddress, literal_address
from sdtask.clients.closing import AsyncClosable

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
Budget = Callable[[int], None]  # told about every decoded piece; raises to stop the download

MAX_REDIRECTS = 5
MAX_ENCODING_LAYERS = 2
PIECE_BYTES = 64 * 1024  # the largest piece one decoding step may produce
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DECODABLE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class OutboundError(Exception):
    """A request that could not be made or completed. `retryable`: a later attempt might succeed (network, 5xx)."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class AddressRefused(OutboundError):
    """The address policy refused the host (or an address it resolves to)."""


class ResponseTooLarge(OutboundError):
    pass


@dataclass(frozen=True)
class OutboundResponse:
    status: int
    reason: str
    headers: httpx.Headers
    body: bytes
    url: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host` (already in wire encoding), in resolver order, without blocking the event loop."""
    import socket

    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"): the address is what the policy judges.
    found = [literal_address(str(info[4][0])) for info in infos]
    return list(dict.fromkeys(address for address in found if address is not None))


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer with the address policy in front: resolve, check every address, connect to them.

    httpcore hands over the host exactly as it goes on the wire (httpx's IDNA encoding) and keeps that name for TLS
    (SNI and verification): only the TCP connection is pinned.
    """

    def __init__(self, policy: AddressPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self._resolve = resolver or resolve_host
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        literal = literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = await self._resolve(host, port)
            except OSError as error:
                reason = getattr(error, "strerror", None) or str(error)
                raise OutboundError(f"cannot resolve host {host!r}: {reason}", retryable=True) from None
        refusal = self.policy.refusal(host, addresses)
        if refusal is not None:
            raise AddressRefused(refusal)
        last: Exception | None = None
        for address in addresses:  # all checked above; the first that answers wins
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last = error
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not reachable from tasks")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pinned_transport(backend: PinnedBackend, verify: ssl.SSLContext | bool) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False, retries=0)
    # httpx builds its pool without a way to pass a network backend: replace it by an identical one that has ours.
    # (test_outbound pins this: a request to a name resolved by the fake resolver reaches the local server.)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        http1=True,
        http2=False,
        network_backend=backend,
    )
    return transport


class _Inflate:
    """One content-encoding layer, decoded in pieces of at most PIECE_BYTES."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._wbits = _DECODABLE[encoding]
        self._fresh = True
        self._inflater = zlib.decompressobj(self._wbits)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            if self._inflater.eof:
                data = self._inflater.unused_data + data
                if not data or self.encoding == "deflate":
                    return  # bytes after a deflate stream's end are ignored, like browsers do
                self._inflater = zlib.decompressobj(self._wbits)  # a gzip file may have several members
            try:
                piece = self._inflater.decompress(data, PIECE_BYTES)
            except zlib.error as error:
                if self.encoding == "deflate" and self._fresh and self._wbits > 0:
                    self._wbits = -zlib.MAX_WBITS  # servers send raw deflate under this name too
                    self._inflater = zlib.decompressobj(self._wbits)
                    continue
                raise OutboundError(f"the {self.encoding}-encoded body is corrupt: {error}") from None
            self._fresh = False
            data = self._inflater.unconsumed_tail
            if piece:
                yield piece
            # More output may wait inside zlib when the piece was full, even with no input left.
            if not data and len(piece) < PIECE_BYTES and not self._inflater.eof:
                return
            if self._inflater.eof and not self._inflater.unused_data and not data:
                return

    def check_complete(self) -> None:
        if not self._fresh and not self._inflater.eof:
            raise OutboundError(f"the {self.encoding}-encoded body is truncated")


def _decoders(headers: httpx.Headers) -> list[_Inflate]:
    encodings = [
        item.strip().lower()
        for value in headers.get_list("content-encoding")
        for item in value.split(",")
        if item.strip() and item.strip().lower() != "identity"
    ]
    if len(encodings) > MAX_ENCODING_LAYERS:
        raise OutboundError(f"the body is encoded {len(encodings)} times ({', '.join(encodings)}); refused")
    unknown = [name for name in encodings if name not in _DECODABLE]
    if unknown:
        raise OutboundError(f"unsupported content encoding {', '.join(unknown)}")
    return [_Inflate(name) for name in reversed(encodings)]  # the last encoding applied is undone first


def _through(layers: list[_Inflate], data: bytes, index: int = 0) -> Iterator[bytes]:
    if index == len(layers):
        if data:
            yield data
        return
    for piece in layers[index].feed(data):
        yield from _through(layers, piece, index + 1)


class Outbound(AsyncClosable):
    """An HTTP client for URLs chosen by a task's author. One per process is enough; `aclose()` it at the end.

    `resolver` replaces DNS (tests); `verify` is the TLS trust (True: the system's).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self.policy = policy
        self.max_redirects = max_redirects
        self.read_timeout = read_timeout
        self._http = httpx.AsyncClient(
            transport=_pinned_transport(PinnedBackend(policy, resolver), verify),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            follow_redirects=False,  # followed here, hop by hop
            trust_env=False,  # no proxy, netrc or CA bundle from the environment
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        max_bytes: int,
        total_timeout: float,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        follow_redirects: bool = True,
        budget: Budget | None = None,
        truncate: bool = False,
    ) -> OutboundResponse:
        """Send the request; the response with at most `max_bytes` of decoded body. Raises OutboundError only.

        With `follow_redirects`, GET is repeated on each Location (up to max_redirects); a redirect is otherwise
        returned as the response. `budget` sees every decoded piece (a total over several requests). With
        `truncate`, a longer body is cut at `max_bytes` (the rest never read) instead of refused.
        """
        limit = _Limit(max_bytes, truncate, budget)
        try:
            async with asyncio.timeout(total_timeout):
                return await self._request(method, url, limit, content, headers, follow_redirects)
        except TimeoutError:
            raise OutboundError(f"timed out after {total_timeout:g}s overall", retryable=True) from None

    async def _request(
        self,
        method: str,
        url: str,
        limit: _Limit,
        content: bytes | None,
        headers: dict[str, str] | None,
        follow_redirects: bool,
    ) -> OutboundResponse:
        try:
            current = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError) as error:
            raise OutboundError(f"invalid URL: {error}") from None
        sent_headers = {"Accept-Encoding": "identity", **(headers or {})}
        for _hop in range(self.max_redirects + 1):
            if current.scheme not in ("http", "https"):
                raise OutboundError(f"unsupported scheme {current.scheme!r} (http and https are)")
            if not current.host:
                raise OutboundError("the URL has no host")
            response = await self._send(method, current, content, sent_headers, limit)
            if not (follow_redirects and response.status in REDIRECT_STATUSES):
                return response
            location = response.headers.get("Location")
            if not location:
                raise OutboundError(f"HTTP {response.status} redirect without a Location header")
            try:
                current = current.join(location)
            except (httpx.InvalidURL, ValueError) as error:
                raise OutboundError(f"redirected to an invalid URL: {error}") from None
            if current.scheme not in ("http", "https"):
                raise OutboundError(f"redirected to an unsupported scheme: {current.scheme!r}")
        raise OutboundError(f"too many redirects (more than {self.max_redirects})")

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        headers: dict[str, str],
        limit: _Limit,
    ) -> OutboundResponse:
        try:
            async with self._http.stream(method, url, content=content, headers=headers) as response:
                if response.status_code in REDIRECT_STATUSES:
                    body = b""  # never read: a redirect's body is not what was asked for
                else:
                    body = await _read_capped(response, limit)
                return OutboundResponse(response.status_code, response.reason_phrase, response.headers, body, str(url))
        except OutboundError:
            raise
        except httpx.ConnectTimeout:
            raise OutboundError(f"connect timed out after {self._http.timeout.connect:g}s", retryable=True) from None
        except httpx.ReadTimeout:
            raise OutboundError(f"read timed out after {self.read_timeout:g}s", retryable=True) from None
        except httpx.TimeoutException as error:
            raise OutboundError(f"timed out ({type(error).__name__})", retryable=True) from None
        except httpx.ConnectError as error:
            raise OutboundError(f"connection failed: {str(error) or 'connection refused'}", retryable=True) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            raise OutboundError(f"{type(error).__name__}: {error}") from None
        except httpx.HTTPError as error:
            raise OutboundError(f"{type(error).__name__}: {error}", retryable=True) from None


@dataclass(frozen=True)
class _Limit:
    max_bytes: int
    truncate: bool
    budget: Budget | None


async def _read_capped(response: httpx.Response, limit: _Limit) -> bytes:
    max_bytes = limit.max_bytes
    announced = response.headers.get("Content-Length")
    if not limit.truncate and announced is not None and announced.isdigit() and int(announced) > max_bytes:
        raise ResponseTooLarge(f"the body is {announced} bytes, over the {max_bytes}-byte limit")
    layers = _decoders(response.headers)
    chunks: list[bytes] = []
    raw_total = decoded_total = 0
    async for raw in response.aiter_raw():
        raw_total += len(raw)
        if raw_total > max_bytes and not limit.truncate:
            raise ResponseTooLarge(f"the body is over the {max_bytes}-byte limit")
        for piece in _through(layers, raw):
            decoded_total += len(piece)
            if decoded_total > max_bytes:
                if limit.truncate:
                    chunks.append(piece[: max_bytes - (decoded_total - len(piece))])
                    return b"".join(chunks)
                raise ResponseTooLarge(f"the body is over the {max_bytes}-byte limit once decoded")
            if limit.budget is not None:
                limit.budget(len(piece))
            chunks.append(piece)
        if limit.truncate and raw_total > max_bytes:
            return b"".join(chunks)
    for layer in layers:
        layer.check_complete()
    return b"".join(chunks)
