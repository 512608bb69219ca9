"""Links in a task's content: detection, substitution, the task's link limits and byte budget, taking inlined data
out of what is stored, redaction, and the S3 allow-list. Pure.

The SD Web UI only takes base64 images, so the agent downloads every http(s)/s3 link found anywhere in the content
(init_images, mask, ControlNet args, imageList[].data, ...) and inlines it: the downloading lives in
`sdtask.clients.fetcher` (`inline_links`, `LinkFetcher`: address policy, pinning, caps).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sdtask.addresses import address_refusal as address_refusal  # re-exported: its old home
from sdtask.api.runtime import DEFAULT_MAX_LINKS, DEFAULT_MAX_TOTAL_DOWNLOAD_BYTES

log = logging.getLogger(__name__)

MAX_LINK_LENGTH = 8192
LINK_SCHEMES = frozenset({"http", "https", "s3"})

JsonPath = tuple[str | int, ...]


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


def substitute_links(node: Any, replacements: dict[str, str]) -> Any:
    """A copy of `node` with link strings replaced; mirrors `_walk_links` so both agree on what is a link."""
    if isinstance(node, str):
        return replacements.get(node.strip(), node) if is_link(node) else node
    if isinstance(node, dict):
        return {
            key: value if isinstance(key, str) and _is_free_text_key(key) else substitute_links(value, replacements)
            for key, value in node.items()
        }
    if isinstance(node, list | tuple):
        return [substitute_links(value, replacements) for value in node]
    return node


class LinkLimitError(LinkError):
    """The task's links as a whole are over a limit (count, total bytes, total time): no single URL is to blame."""

    def __init__(self, reason: str) -> None:
        super().__init__("", reason)

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class LinkLimits:
    """Caps on a task's links as a whole. The per-link size cap belongs to the fetcher."""

    max_links: int = DEFAULT_MAX_LINKS
    max_total_bytes: int = DEFAULT_MAX_TOTAL_DOWNLOAD_BYTES
    seconds: float | None = None  # the whole link phase; the caller gives what is left of the attempt's timeout


class ByteBudget:
    """The bytes a task's links may still bring in, shared by their concurrent downloads.

    A fetcher charges every piece as it arrives (`take`), so the total is enforced while streaming, not after six
    downloads of the per-link maximum are already in memory.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    @property
    def remaining(self) -> int:
        return max(0, self.max_bytes - self.used)

    def take(self, count: int) -> None:
        self.used += count
        if self.used > self.max_bytes:
            raise LinkLimitError(f"the task's links are over the {self.max_bytes}-byte total limit")


@dataclass(frozen=True)
class Inlined:
    """Content with its links replaced, and what each inlined base64 string stood for (to take it out again)."""

    content: Any
    sources: dict[str, str]  # base64 -> the URL it was fetched from


MAX_RESTORE_DEPTH = 128


def restore_links(value: Any, sources: dict[str, str]) -> Any:
    """A copy of `value` (e.g. the Web UI's echo of the request) with the inlined link data taken out again.

    The `.out` record must not carry the bytes of fetched inputs: whoever reads the record could then read whatever
    the agent's credentials reach through an s3:// link. A string that is an inlined base64 becomes the (redacted)
    link it came from; a string holding one (a data: URI) gets it replaced in place. Pure.
    """
    if not sources:
        return value
    return _restore(value, sources, 0)


def _restore(value: Any, sources: dict[str, str], depth: int) -> Any:
    if isinstance(value, str):
        if value in sources:
            return redact_url(sources[value])
        if len(value) >= _MIN_INLINED_LENGTH:
            for data, url in sources.items():
                if data and data in value:
                    value = value.replace(data, redact_url(url))
        return value
    if depth >= MAX_RESTORE_DEPTH:
        return "<nested too deep to store>"
    if isinstance(value, dict):
        return {key: _restore(item, sources, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_restore(item, sources, depth + 1) for item in value]
    return value


_MIN_INLINED_LENGTH = 4  # base64 of one byte


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


# --- address policy (sdtask.addresses) and S3 allow-list -------------------------------------------------------------


def s3_link_refusal(bucket: str, key: str, allowed_prefixes: list[str] | tuple[str, ...]) -> str | None:
    """Why `s3://bucket/key` may not be read for a task, or None. Pure.

    The agent's S3 credentials reach more than a task's author should (other teams' buckets, the models): an s3://
    link is read only under a prefix the runtime allows (`s3://bucket/prefix`, matched as a string prefix of the
    key, like S3 and IAM match prefixes; `s3://bucket` or `s3://bucket/` allows the whole bucket).
    """
    for allowed in allowed_prefixes:
        try:
            allowed_bucket, allowed_key = _split_s3(allowed)
        except ValueError:
            continue
        if bucket == allowed_bucket and key.startswith(allowed_key):
            return None
    where = ", ".join(allowed_prefixes) if allowed_prefixes else "none"
    return (
        f"refused: s3://{bucket}/{key} is outside the runtime's allowed S3 prefixes ({where}); "
        "see agent.allowedS3Prefixes"
    )


def _split_s3(uri: str) -> tuple[str, str]:
    text = uri.strip()
    if not text.startswith("s3://"):
        raise ValueError(uri)
    bucket, _, key = text[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(uri)
    return bucket, key
