"""The fetching half of links: the bytes behind an http(s) or s3:// link of a task, within the runtime's policy.

http(s) goes through `clients.outbound` (address policy, pinning, decoded-size cap, one time limit); s3:// goes to the
runtime's S3 endpoint, only under the prefixes the runtime allows (`sdtask.links.s3_link_refusal`).
`inline_links` fetches a task's links concurrently within its limits, through the `Fetch` seam (`LinkFetcher.fetch`
in the agent, a plain function in tests). Detection, substitution and redaction stay pure in `sdtask.links`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from sdtask.addresses import AddressPolicy
from sdtask.api.runtime import DEFAULT_MAX_DOWNLOAD_BYTES
from sdtask.clients.closing import AsyncClosable
from sdtask.clients.outbound import Outbound, OutboundError, Resolver
from sdtask.clients.s3 import ObjectTooLarge, S3Client, describe_s3_error, get_object_capped
from sdtask.links import (
    ByteBudget,
    Inlined,
    LinkError,
    LinkLimitError,
    LinkLimits,
    find_links,
    s3_link_refusal,
    substitute_links,
)
from sdtask.naming import parse_s3_uri

# A fetch gets the URL and the task's shared byte budget, which it charges as bytes arrive.
Fetch = Callable[[str, ByteBudget], Awaitable[bytes]]


class LinkFetcher(AsyncClosable):
    """Fetches http(s) and s3 links with a per-link size cap, timeouts, the address policy and the S3 allow-list.

    `s3_client_factory` returns the boto3 client of the runtime's S3 endpoint (called once, lazily, in a thread).
    `s3_prefixes` lists the `s3://bucket/prefix` locations links may read (the caller adds the runtime's own output
    bucket and model prefix); empty refuses every s3 link. `resolver` replaces DNS (tests).
    Use as `async with LinkFetcher(...) as fetcher:` or call `aclose()`.
    """

    def __init__(
        self,
        *,
        policy: AddressPolicy | None = None,
        s3_client_factory: Callable[[], S3Client] | None = None,
        s3_prefixes: tuple[str, ...] = (),
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        timeout: float = 30.0,
        total_timeout: float = 120.0,
        resolver: Resolver | None = None,
        outbound: Outbound | None = None,
        observe: Callable[[str, float, int | None], None] | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.total_timeout = total_timeout
        self.s3_prefixes = s3_prefixes
        self._s3_client_factory = s3_client_factory
        self._s3_client: S3Client | None = None
        self._s3_lock = asyncio.Lock()
        self._observe = observe  # (scheme, seconds, bytes or None on failure): the agent's metrics
        self._owned = outbound is None
        self._outbound = outbound or Outbound(policy or AddressPolicy(), resolver=resolver, read_timeout=timeout)

    async def aclose(self) -> None:
        if self._owned:
            await self._outbound.aclose()

    async def fetch(self, url: str, budget: ByteBudget | None = None) -> bytes:
        """The bytes behind `url`; LinkError for anything that goes wrong (never another exception)."""
        url = url.strip()
        scheme = url.partition("://")[0].lower()
        started, size = time.monotonic(), None
        try:
            data = await self._fetch_any(url, scheme, budget)
            size = len(data)
            return data
        finally:
            if self._observe is not None:
                self._observe(scheme, time.monotonic() - started, size)

    async def _fetch_any(self, url: str, scheme: str, budget: ByteBudget | None) -> bytes:
        if scheme == "s3":
            data = await self._fetch_s3(url, budget)
        elif scheme in ("http", "https"):
            data = await self._fetch_http(url, budget)
        else:
            raise LinkError(url, f"unsupported scheme {scheme!r} (http, https and s3 are)")
        if not data:
            raise LinkError(url, "the link points to an empty file")
        return data

    async def _fetch_http(self, url: str, budget: ByteBudget | None) -> bytes:
        try:
            response = await self._outbound.request(
                "GET",
                url,
                max_bytes=self.max_bytes,
                total_timeout=self.total_timeout,
                budget=budget.take if budget is not None else None,
            )
        except LinkLimitError:
            raise
        except OutboundError as error:
            raise LinkError(url, error.reason) from None
        if not response.ok:
            raise LinkError(url, f"HTTP {response.status} {response.reason}".rstrip())
        return response.body

    async def _fetch_s3(self, url: str, budget: ByteBudget | None) -> bytes:
        try:
            bucket, key = parse_s3_uri(url)
        except ValueError as exc:
            raise LinkError(url, str(exc)) from None
        refusal = s3_link_refusal(bucket, key, self.s3_prefixes)
        if refusal is not None:
            raise LinkError(url, refusal)
        cap = self.max_bytes if budget is None else max(1, min(self.max_bytes, budget.remaining))
        try:
            client = await self._s3()
            if client is None:
                raise LinkError(url, "s3 links are not enabled (no S3 client configured)")
            async with asyncio.timeout(self.total_timeout):
                data = await get_object_capped(client, bucket, key, cap)
        except LinkError:
            raise
        except TimeoutError:
            raise LinkError(url, f"timed out after {self.total_timeout:g}s overall") from None
        except Exception as exc:
            if budget is not None and cap < self.max_bytes and isinstance(exc, ObjectTooLarge):
                raise LinkLimitError(f"the task's links are over the {budget.max_bytes}-byte total limit") from None
            raise LinkError(url, describe_s3_error(exc)) from exc
        if budget is not None:
            budget.take(len(data))
        return data

    async def _s3(self) -> S3Client | None:
        if self._s3_client_factory is None:
            return None
        async with self._s3_lock:
            if self._s3_client is None:
                # Building a boto3 client loads its service model from disk: not on the event loop.
                self._s3_client = await asyncio.to_thread(self._s3_client_factory)
        return self._s3_client


async def inline_links(
    content: Any, fetch: Fetch, *, limits: LinkLimits | None = None, max_concurrency: int = 4
) -> Inlined:
    """A copy of `content` with every link replaced by the base64 of its bytes. The input is not mutated.

    Each distinct URL is fetched once, at most `max_concurrency` at a time, within `limits` (count checked before any
    download, bytes while downloading, time for the whole phase). The first failure cancels the other downloads and
    is raised as LinkError (LinkLimitError for a limit).
    """
    limits = limits or LinkLimits()
    urls = list(dict.fromkeys(ref.url for ref in find_links(content)))
    if not urls:
        return Inlined(substitute_links(content, {}), {})
    if len(urls) > limits.max_links:
        raise LinkLimitError(f"the task has {len(urls)} links, over the limit of {limits.max_links}")
    semaphore = asyncio.Semaphore(max(1, max_concurrency))
    budget = ByteBudget(limits.max_total_bytes)
    fetched = 0

    async def fetch_one(url: str) -> str:
        nonlocal fetched
        async with semaphore:
            try:
                data = await fetch(url, budget)
            except LinkError:
                raise
            except Exception as exc:  # a fetch must fail as LinkError, whatever went wrong inside it
                raise LinkError(url, f"{type(exc).__name__}: {exc}") from exc
        fetched += len(data)  # a backstop for a fetcher that doesn't charge the budget
        if fetched > limits.max_total_bytes:
            raise LinkLimitError(f"the task's links are over the {limits.max_total_bytes}-byte total limit")
        return base64.b64encode(data).decode("ascii")

    try:
        async with asyncio.timeout(limits.seconds), asyncio.TaskGroup() as group:
            tasks = {url: group.create_task(fetch_one(url)) for url in urls}
    except TimeoutError:
        raise LinkLimitError(f"fetching the task's links took longer than {limits.seconds:g}s in all") from None
    except BaseExceptionGroup as group_error:
        raise _first_link_error(group_error) from None
    replacements = {url: task.result() for url, task in tasks.items()}
    return Inlined(substitute_links(content, replacements), {data: url for url, data in replacements.items()})


async def replace_links(
    content: Any, fetch: Fetch, *, limits: LinkLimits | None = None, max_concurrency: int = 4
) -> Any:
    """`inline_links`, content only."""
    return (await inline_links(content, fetch, limits=limits, max_concurrency=max_concurrency)).content


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
