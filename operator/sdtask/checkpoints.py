"""Checkpoint names in all the forms users and the Web UI write them. Pure.

"v1-5.safetensors [6ce0161689]" (a Web UI title), "v1-5.safetensors" (a file), "v1-5" (a model name),
"/models/Stable-diffusion/v1-5.safetensors" (a path), "6ce0161689" (its short hash) and its sha256 all name one
checkpoint, as they do for the real server (modules/sd_models.py, CheckpointInfo.ids and checkpoint_aliases). The
hashes are known only after the server loaded the file once: before that its title has no "[hash]" and sd-models
answers `hash: null, sha256: null`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_HASH_SUFFIX = re.compile(r"(?P<name>.*?)\s*\[(?P<hash>[0-9a-fA-F]+)\]")
_HEX = re.compile(r"[0-9a-fA-F]{8,64}")
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Checkpoint:
    title: str  # "v1-5-pruned-emaonly.safetensors [6ce0161689]"
    model_name: str  # "v1-5-pruned-emaonly"
    filename: str  # full path on the Web UI's disk
    sha256: str | None = None  # known once the Web UI has loaded the file
    shorthash: str | None = None  # the first 10 hex digits of sha256 (sd-models' `hash`)

    @property
    def name(self) -> str:
        """The title without its hash: the file name relative to the models folder."""
        return split_hash(self.title)[0]

    @property
    def hash(self) -> str | None:
        return split_hash(self.title)[1] or (self.shorthash.lower() if self.shorthash else None)

    def has_hash(self, digest: str) -> bool:
        """True when `digest` is this file's short hash or sha256 (or a prefix of it of at least 8 digits)."""
        digest = digest.lower()
        known = [h.lower() for h in (self.sha256, self.shorthash, split_hash(self.title)[1]) if h]
        return any(h.startswith(digest) or digest.startswith(h) for h in known) if _HEX.fullmatch(digest) else False


def split_hash(title: str) -> tuple[str, str | None]:
    match = _HASH_SUFFIX.fullmatch(title.strip())
    if match is None:
        return title.strip(), None
    return match.group("name"), match.group("hash").lower()


def basename(path: str) -> str:
    return re.split(r"[\\/]", path)[-1]


def stem(name: str) -> str:
    """The name without a model file extension ("sd-v1.5" keeps its dot: it is no extension)."""
    for extension in MODEL_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def checkpoint_stem(name: str) -> str:
    return stem(basename(split_hash(name)[0]))


def same_checkpoint(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and checkpoint_stem(a) == checkpoint_stem(b)


def match_checkpoint(requested: str, available: list[Checkpoint]) -> Checkpoint | None:
    """The checkpoint `requested` names, by title ("x.safetensors [hash]"), file name ("x.safetensors"), model name
    ("x"), short hash or sha256; None when nothing matches.

    Tiers are tried from the most to the least precise; inside a tier the first in `available` wins. A requested hash
    that differs from the checkpoint's is no match: it is another file with the same name.
    """
    wanted_name, wanted_hash = split_hash(requested)
    if not wanted_name:
        return None

    def same_file(checkpoint: Checkpoint) -> bool:
        return wanted_hash is None or checkpoint.hash is None or checkpoint.hash.startswith(wanted_hash)

    tiers: tuple[Callable[[Checkpoint], bool], ...] = (
        lambda c: c.title == requested.strip(),
        lambda c: c.name == wanted_name and same_file(c),
        lambda c: basename(c.filename) == wanted_name and same_file(c),
        lambda c: wanted_hash is None and wanted_name in (c.model_name, stem(c.name)),
        lambda c: wanted_hash is None and c.has_hash(wanted_name),
    )
    for matches in tiers:
        for checkpoint in available:
            if matches(checkpoint):
                return checkpoint
    return None
