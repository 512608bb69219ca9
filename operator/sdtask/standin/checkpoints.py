"""Checkpoints as AUTOMATIC1111 v1.10 lists and names them (`modules/sd_models.py`, `modules/modelloader.py`).

- Listed from `<models path>/Stable-diffusion` and `--ckpt-dir` only (`list_models` -> `modelloader.load_models` ->
  `shared.walk_files`: recursive, following links, in natural order, `.ckpt`/`.safetensors` but not `.vae.*`), plus the
  `--ckpt` file when it exists; nothing elsewhere is ever listed, even after a refresh.
- `name` is the path relative to `--ckpt-dir` or the models folder (else the file's base name); `model_name` is the
  name with `/` as `_` and no extension; `name_for_extra` is the base name without extension.
- The sha256 (and the short hash, its first 10 characters) is known only once it was computed: when the model is
  loaded (`get_checkpoint_state_dict` -> `calculate_shorthash`), never while listing. Until then `title` is the bare
  name and the API's `hash` and `sha256` are null; afterwards `title` is `name [shorthash]`. `--no-hashing` never
  computes it.
- Aliases (`CheckpointInfo.ids`, registered in `checkpoint_aliases`): the legacy 8-character `model_hash`, model_name,
  title, name, name_for_extra, `name [legacy hash]`; once hashed also the short hash, the sha256, `name [shorthash]`
  and `name_for_extra [shorthash]`. Matching is exact (a dict lookup), case-sensitive.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
EXCLUDED_SUFFIXES = (".vae.ckpt", ".vae.safetensors")  # list_models' ext_blacklist


def legacy_model_hash(filename: str) -> str:
    """sd_models.model_hash: 8 hex characters of the sha256 of 64 KiB at offset 1 MiB ('NOFILE' if missing)."""
    try:
        with open(filename, "rb") as file:
            file.seek(0x100000)
            return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]
    except FileNotFoundError:
        return "NOFILE"


def file_sha256(filename: str) -> str:
    """hashes.calculate_sha256: of the whole file."""
    digest = hashlib.sha256()
    with open(filename, "rb") as file:
        for block in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CheckpointInfo:
    """One listed checkpoint; `sha256` stays None until the model was loaded once."""

    name: str
    filename: str  # absolute path
    legacy_hash: str
    sha256: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path, roots: list[Path]) -> CheckpointInfo:
        absolute = os.path.abspath(path)
        name = os.path.basename(absolute)
        for root in roots:  # --ckpt-dir first, then the models folder, as CheckpointInfo.__init__ checks them
            prefix = os.path.abspath(root)
            if absolute.startswith(prefix):
                name = absolute[len(prefix) :].lstrip("/")
                break
        return cls(name=name, filename=absolute, legacy_hash=legacy_model_hash(absolute))

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def model_name(self) -> str:
        return os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]

    @property
    def name_for_extra(self) -> str:
        return os.path.splitext(os.path.basename(self.filename))[0]

    def ids(self) -> list[str]:
        names = [
            self.legacy_hash,
            self.model_name,
            self.title,
            self.name,
            self.name_for_extra,
            f"{self.name} [{self.legacy_hash}]",
        ]
        if self.shorthash and self.sha256:
            names += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]"]
            names.append(f"{self.name_for_extra} [{self.shorthash}]")
        return names

    def calculate_shorthash(self) -> str:
        if self.sha256 is None:
            self.sha256 = file_sha256(self.filename)
        return self.shorthash or ""

    def as_api(self) -> dict[str, Any]:
        """One item of GET /sdapi/v1/sd-models (api.py `get_sd_models`, models.py `SDModelItem`)."""
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": None,  # find_checkpoint_config_near_filename: no .yaml next to the file
        }


def natural_sort_key(text: str) -> list[Any]:
    """shared_items/util natural_sort_key: digits compare as numbers, the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def walk_checkpoint_files(folder: Path) -> Iterator[Path]:
    """shared.walk_files over one folder: recursive, links followed, folders then files in natural order."""
    if not folder.exists():
        return
    walked = sorted(os.walk(folder, followlinks=True), key=lambda item: natural_sort_key(item[0]))
    for root, _, files in walked:
        for name in sorted(files, key=natural_sort_key):
            lowered = name.lower()
            if not lowered.endswith(CHECKPOINT_SUFFIXES) or lowered.endswith(EXCLUDED_SUFFIXES):
                continue
            path = Path(root) / name
            if path.is_symlink() and not path.exists():
                continue  # "Skipping broken symlink"
            yield path


class CheckpointList:
    """`checkpoints_list` and `checkpoint_aliases`; hashes survive a refresh, as the real hash cache does."""

    def __init__(self, model_path: Path, ckpt_dir: Path | None, ckpt: Path | None) -> None:
        self.model_path = model_path
        self.ckpt_dir = ckpt_dir
        self.ckpt = ckpt
        self._known_sha256: dict[str, str] = {}
        self.items: list[CheckpointInfo] = []
        self.ckpt_info: CheckpointInfo | None = None

    def places(self) -> list[Path]:
        """modelloader.load_models: `--ckpt-dir` (if it exists and differs) before the models folder."""
        found = []
        ckpt_dir = self.ckpt_dir
        if ckpt_dir is not None and os.path.abspath(ckpt_dir) != os.path.abspath(self.model_path) and ckpt_dir.exists():
            found.append(ckpt_dir)
        found.append(self.model_path)
        return found

    def refresh(self) -> None:
        """list_models: the `--ckpt` file first when it exists, then every file of the scanned folders."""
        roots = [root for root in (self.ckpt_dir, self.model_path) if root is not None]
        items: list[CheckpointInfo] = []
        seen: set[str] = set()

        def add(path: Path) -> CheckpointInfo:
            info = CheckpointInfo.from_file(path, roots)
            info.sha256 = self._known_sha256.get(info.filename)
            items.append(info)
            seen.add(info.filename)
            return info

        self.ckpt_info = add(self.ckpt) if self.ckpt is not None and self.ckpt.is_file() else None
        for place in self.places():
            for path in walk_checkpoint_files(place):
                if os.path.abspath(path) not in seen:
                    add(path)
        self.items = items

    def remember_hash(self, info: CheckpointInfo) -> None:
        if info.sha256:
            self._known_sha256[info.filename] = info.sha256

    def aliases(self) -> dict[str, CheckpointInfo]:
        """checkpoint_aliases: later registrations win on a clash, as `register()` overwrites the dict."""
        table: dict[str, CheckpointInfo] = {}
        for info in self.items:
            for alias in info.ids():
                table[alias] = info
        return table

    def match(self, wanted: object) -> CheckpointInfo | None:
        if not isinstance(wanted, str):
            return None
        return self.aliases().get(wanted)

    def looked_at(self) -> str:
        """select_checkpoint's FileNotFoundError text when nothing is listed."""
        text = "No checkpoints found. When searching for checkpoints, looked at:"
        if self.ckpt is not None:
            text += f"\n - file {os.path.abspath(self.ckpt)}"
        text += f"\n - directory {self.model_path}"
        if self.ckpt_dir is not None:
            text += f"\n - directory {os.path.abspath(self.ckpt_dir)}"
        return (
            text
            + "Can't run without a checkpoint. Find and place a .ckpt or .safetensors file into any of those locations."
        )
