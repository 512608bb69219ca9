"""Links in a task's content: detection, replacement by base64, and the fetchers (http/https/s3).

The SD Web UI only takes base64 images, so the agent downloads every http(s)/s3 link found anywhere in the content
(init_images, mask, ControlNet args, imageList[].data, ...) and inlines it. Detection and replacement are pure apart
from the injected `fetch`; `LinkFetcher` is the real fetch, guarded against SSRF: a task author must not be able to
make a GPU pod read the cloud metadata service or an in-cluster service.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import httpx

from sdtask.agent import metrics
from sdtask.clients.s3 import S3Client, describe_s3_error, get_object_capped
from sdtask.naming import parse_s3_uri

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 50 * MiB
MAX_REDIRECTS = 5
MAX_LINK_LENGTH = 8192
LINK_SCHEMES = frozenset({"http", "https", "s3"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

JsonPath = tuple[str | int, ...]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Fetch = Callable[[str], Awaitable[bytes]]
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class LinkError(Exception):
    """A link could not be turned into bytes. `str()` names the URL (credentials and query values masked)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot fetch {redact_url(self.url)}: {self.reason}"


@dataclass(frozen=True)
class LinkRef:
    path: JsonPath
    url: str

    @property
    def location(self) -> str:
        """The path in a readable form, e.g. `alwayson_scripts.controlnet.args[0].image`."""
        text = ""
        for part in self.path:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text or "$"


# --- detection ------------------------------------------------------------------------------------------------------


def is_link(value: object) -> bool:
    """True when the whole (stripped) string is one http/https/s3 URL with a host (s3: a bucket).

    A prompt that starts with "http", a data: URI or base64 are not links.
    """
    if not isinstance(value, str):
        return False
    text = value.strip()
    if not text or len(text) > MAX_LINK_LENGTH or any(char.isspace() for char in text):
        return False
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced '[' in the host
        return False
    if parts.scheme not in LINK_SCHEMES or "://" not in text[: len(parts.scheme) + 3]:
        return False
    if parts.scheme == "s3":
        return bool(parts.netloc)
    return bool(host)


def _is_free_text_key(key: str) -> bool:
    # Prompts are free text handed to the model: a prompt that happens to be a URL stays a prompt.
    return key == "prompt" or key.endswith("_prompt")


def _walk_links(node: Any, path: JsonPath) -> Iterator[LinkRef]:
    if isinstance(node, str):
        if is_link(node):
            yield LinkRef(path, node.strip())
    elif isinstance(node, dict):
        for key, value in node.items():
            if not (isinstance(key, str) and _is_free_text_key(key)):
                yield from _walk_links(value, (*path, key))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from _walk_links(value, (*path, index))


def find_links(content: Any) -> list[LinkRef]:
    """Every link in `content` (dicts and lists at any depth), in document order, with its path."""
    return list(_walk_links(content, ()))


def _substitute(node: Any, replacements: dict[str, str]) -> Any:
    """A copy of `node` with link strings replaced; mirrors `_walk_links` so both agree on what is a link."""
    if isinstance(node, str):
        return replacements.get(node.strip(), node) if is_link(node) else node
    if isinstance(node, dict):
        return {
            key: value if isinstance(key, str) and _is_free_text_key(key) else _substitute(value, replacements)
            for key, value in node.items()
        }
    if isinstance(node, list | tuple):
        return [_substitute(value, replacements) for value in node]
    return node


async def replace_links(content: Any, fetch: Fetch, *, max_concurrency: int = 4) -> Any:
    """A copy of `content` with every link replaced by the base64 of its bytes. The input is not mutated.

    Each distinct URL is fetched once, at most `max_concurrency` at a time. The first failure cancels the other
    downloads and is raised as LinkError.
    """
    urls = list(dict.fromkeys(ref.url for ref in find_links(content)))
    if not urls:
        return _substitute(content, {})
    semaphore = asyncio.Semaphore(max(1, max_concurrency))

    async def fetch_one(url: str) -> str:
        async with semaphore:
            try:
                data = await fetch(url)
            except LinkError:
                raise
            except Exception as exc:  # a fetch must fail as LinkError, whatever went wrong inside it
                raise LinkError(url, f"{type(exc).__name__}: {exc}") from exc
        return base64.b64encode(data).decode("ascii")

    try:
        async with asyncio.TaskGroup() as group:
            tasks = {url: group.create_task(fetch_one(url)) for url in urls}
    except BaseExceptionGroup as group_error:
        raise _first_link_error(group_error) from None
    return _substitute(content, {url: task.result() for url, task in tasks.items()})


def _first_link_error(group_error: BaseExceptionGroup[BaseException]) -> BaseException:
    matched, _ = group_error.split(LinkError)
    if matched is None:
        return group_error
    leaves = list(_leaves(matched))
    return leaves[0] if leaves else group_error


def _leaves(group_error: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group_error.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def redact_url(url: str) -> str:
    """`url` without user info, fragment and query values: presigned URLs carry signatures, which are secrets."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    if parts.scheme not in ("http", "https") or host is None:
        return url.strip()
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = "&".join(f"{name}=***" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


# --- address policy -------------------------------------------------------------------------------------------------


def address_refusal(address: IPAddress) -> str | None:
    """Why a link to `address` is refused by default ("a private address"...), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_refusal(address.ipv4_mapped)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:  # carrier-grade NAT, documentation ranges, ...
        return "a non-public address"
    return None


def _refused_message(host: str, address: IPAddress, kind: str) -> str:
    subject = str(address) if host == str(address) else f"{host} resolves to {address}, which"
    return f"refused: {subject} is {kind}; set allowPrivateLinks to allow"


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# --- fetcher --------------------------------------------------------------------------------------------------------


class LinkFetcher:
    """Fetches http(s) and s3 links with a size cap, timeouts and the private-address policy.

    `s3_client_factory` returns the boto3 client of the configured S3 endpoint (called once, lazily, in a thread);
    s3 links go to that endpoint, so the private-address policy does not apply to them. `allowed_hosts` lists host
    names (or literal addresses) exempt from that policy. `http_transport` and `resolver` replace the network and
    DNS (tests).
    Use as `async with LinkFetcher(...) as fetcher:` or call `aclose()`.
    """

    def __init__(
        self,
        *,
        s3_client_factory: Callable[[], S3Client] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = 30.0,
        total_timeout: float = 120.0,
        allow_private: bool = False,
        allowed_hosts: frozenset[str] = frozenset(),
        http_transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self._s3_client_factory = s3_client_factory
        self._s3_client: S3Client | None = None
        self._s3_lock = asyncio.Lock()
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.allow_private = allow_private
        self.allowed_hosts = frozenset(_normalize_host(host) for host in allowed_hosts)
        self._resolve = resolver or resolve_host
        self._http = httpx.AsyncClient(
            transport=http_transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,  # followed by hand: every hop goes through the address policy
            trust_env=False,  # a proxy from the environment would bypass the address policy
            # No pooled connections: a connection pinned to one address must not serve another host name.
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch(self, url: str) -> bytes:
        """The bytes behind `url`; LinkError for anything that goes wrong (never another exception)."""
        url = url.strip()
        scheme = url.partition("://")[0].lower()
        started, size = time.monotonic(), None
        try:
            data = await self._fetch_any(url, scheme)
            size = len(data)
            return data
        finally:
            metrics.link_fetched(scheme, time.monotonic() - started, size)

    async def _fetch_any(self, url: str, scheme: str) -> bytes:
        try:
            async with asyncio.timeout(self.total_timeout):
                if scheme == "s3":
                    data = await self._fetch_s3(url)
                elif scheme in ("http", "https"):
                    data = await self._fetch_http(url)
                else:
                    raise LinkError(url, f"unsupported scheme {scheme!r} (http, https and s3 are)")
        except TimeoutError:
            raise LinkError(url, f"timed out after {self.total_timeout:g}s overall") from None
        if not data:
            raise LinkError(url, "the link points to an empty file")
        return data

    # --- s3 ---

    async def _fetch_s3(self, url: str) -> bytes:
        try:
            bucket, key = parse_s3_uri(url)
        except ValueError as exc:
            raise LinkError(url, str(exc)) from None
        try:
            client = await self._s3()
            if client is None:
                raise LinkError(url, "s3 links are not enabled (no S3 client configured)")
            return await get_object_capped(client, bucket, key, self.max_bytes)
        except LinkError:
            raise
        except Exception as exc:
            raise LinkError(url, describe_s3_error(exc)) from exc

    async def _s3(self) -> S3Client | None:
        if self._s3_client_factory is None:
            return None
        async with self._s3_lock:
            if self._s3_client is None:
                # Building a boto3 client loads its service model from disk: not on the event loop.
                self._s3_client = await asyncio.to_thread(self._s3_client_factory)
        return self._s3_client

    # --- http ---

    async def _fetch_http(self, url: str) -> bytes:
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise LinkError(url, f"invalid URL: {exc}") from None
        for _hop in range(MAX_REDIRECTS + 1):
            outcome = await self._get_once(url, current)
            if isinstance(outcome, bytes):
                return outcome
            current = outcome
        raise LinkError(url, f"too many redirects (more than {MAX_REDIRECTS})")

    async def _get_once(self, url: str, target: httpx.URL) -> httpx.URL | bytes:
        """GET one hop: the body, or the next URL when redirected."""
        if target.scheme not in ("http", "https"):
            raise LinkError(url, f"redirected to an unsupported scheme: {target.scheme!r}")
        request_url, headers, extensions = await self._pinned_request(url, target)
        try:
            async with self._http.stream("GET", request_url, headers=headers, extensions=extensions) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    return _redirect_target(url, target, response)
                if not 200 <= response.status_code < 300:
                    raise LinkError(url, f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
                return await self._read_capped(url, response)
        except httpx.ConnectTimeout:
            raise LinkError(url, f"connect timed out after {self.timeout:g}s") from None
        except httpx.ReadTimeout:
            raise LinkError(url, f"read timed out after {self.timeout:g}s") from None
        except httpx.TimeoutException as exc:
            raise LinkError(url, f"timed out ({type(exc).__name__})") from None
        except httpx.ConnectError as exc:
            raise LinkError(url, f"connection failed: {exc or 'connection refused'}") from None
        except httpx.HTTPError as exc:
            raise LinkError(url, f"{type(exc).__name__}: {exc}") from None

    async def _pinned_request(self, url: str, target: httpx.URL) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
        """The URL to connect to, plus Host header and TLS name when the host was resolved and checked here.

        Connecting to the address that was checked (not resolving again) closes the DNS-rebinding hole.
        """
        host = target.raw_host.decode("ascii")
        if self.allow_private or _normalize_host(host) in self.allowed_hosts:
            return target, {}, {}
        literal = _literal_address(host)
        if literal is not None:
            self._check_address(url, host, literal)
            return target, {}, {}
        address = await self._resolve_checked(url, host, target.port or (443 if target.scheme == "https" else 80))
        extensions: dict[str, Any] = {"sni_hostname": host} if target.scheme == "https" else {}
        headers = {"Host": target.netloc.decode("ascii")}
        return target.copy_with(host=str(address)), headers, extensions

    async def _resolve_checked(self, url: str, host: str, port: int) -> IPAddress:
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise LinkError(url, f"cannot resolve host {host!r}: {getattr(exc, 'strerror', None) or exc}") from None
        if not addresses:
            raise LinkError(url, f"host {host!r} has no address")
        # Every address must pass: a name resolving to one public and one private address is not let through.
        for address in addresses:
            self._check_address(url, host, address)
        return addresses[0]

    def _check_address(self, url: str, host: str, address: IPAddress) -> None:
        kind = address_refusal(address)
        if kind is not None:
            raise LinkError(url, _refused_message(host, address, kind))

    async def _read_capped(self, url: str, response: httpx.Response) -> bytes:
        announced = response.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > self.max_bytes:
            raise LinkError(url, f"the file is {announced} bytes, over the {self.max_bytes}-byte limit")
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_bytes():  # decoded bytes: a gzip bomb is capped too
            received += len(chunk)
            if received > self.max_bytes:
                raise LinkError(url, f"the file is over the {self.max_bytes}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host`, in resolver order, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"): the address is what the policy judges.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def _redirect_target(url: str, current: httpx.URL, response: httpx.Response) -> httpx.URL:
    location = response.headers.get("Location")
    if not location:
        raise LinkError(url, f"HTTP {response.status_code} redirect without a Location header")
    try:
        return current.join(location)
    except httpx.InvalidURL as exc:
        raise LinkError(url, f"redirected to an invalid URL: {exc}") from None


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
