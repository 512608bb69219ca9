"""The stand-in's checkpoint files: valid, minimal safetensors files, so loading can fail the way it does for real.

A safetensors file is an 8-byte little-endian header length N, then N bytes of a JSON object (tensor name ->
{dtype, shape, data_offsets}, plus an optional `__metadata__` of string -> string), then the tensors' bytes. The real
Web UI reads `.safetensors` checkpoints with `safetensors.torch.load_file` (`sd_models.read_state_dict`) and their
metadata with its own header reader (`sd_models.read_metadata_from_safetensors`, which also insists the JSON starts
with `{`); a truncated or garbage file raises, the load fails and, for a switch, the old model stays. The stand-in
checks the same: header length, JSON object, every tensor's data range inside the file. `.ckpt` files (pickles) are
not parsed: any `.ckpt` loads, since the real loader's pickle checks are out of reach here.

`write_checkpoint(path)` makes a file that loads; tests and the local simulator create checkpoints with it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

# One tiny tensor so the file is not empty of weights; its bytes are what varies between files (`seed`).
_TENSOR = "model.diffusion_model.stand_in.weight"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the header


class SafetensorError(Exception):
    """The file is not a checkpoint the stand-in can load."""


def checkpoint_bytes(seed: str = "", metadata: dict[str, str] | None = None, tensor_bytes: int = 16) -> bytes:
    """A minimal valid safetensors file: one uint8 tensor of `tensor_bytes` bytes derived from `seed`."""
    digest = hashlib.sha256(seed.encode()).digest()
    data = (digest * (tensor_bytes // len(digest) + 1))[:tensor_bytes]
    header: dict[str, Any] = {_TENSOR: {"dtype": "U8", "shape": [tensor_bytes], "data_offsets": [0, tensor_bytes]}}
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(encoded)) + encoded + data


def write_checkpoint(
    path: Path, seed: str | None = None, metadata: dict[str, str] | None = None, tensor_bytes: int = 16
) -> Path:
    """Write a loadable stand-in checkpoint at `path` (folders created); distinct seeds give distinct sha256s.

    The seed defaults to the file name, so two checkpoints of different names differ in content and in hash.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(checkpoint_bytes(path.name if seed is None else seed, metadata, tensor_bytes))
    return path


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON header of safetensors bytes; SafetensorError when the file is not valid safetensors."""
    if len(data) < 8:
        raise SafetensorError("Error while deserializing header: HeaderTooSmall")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES:
        raise SafetensorError("Error while deserializing header: HeaderTooLarge")
    if 8 + length > len(data):
        raise SafetensorError("Error while deserializing header: InvalidHeaderLength")
    raw = data[8 : 8 + length]
    if not raw.startswith(b"{"):
        raise SafetensorError("Error while deserializing header: InvalidHeaderStart")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise SafetensorError(f"Error while deserializing header: InvalidHeaderDeserialization ({error})") from error
    if not isinstance(header, dict):
        raise SafetensorError("Error while deserializing header: InvalidHeaderDeserialization")
    body = len(data) - 8 - length
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(value, int) for value in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise SafetensorError(f"Error while deserializing header: InvalidOffset({name})")
    return header


def load_checkpoint(filename: str) -> dict[str, Any]:
    """What loading the weights does to the stand-in: read and check the file; returns the header (or {} for .ckpt)."""
    path = Path(filename)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SafetensorError(f"cannot read {filename}: {error}") from error
    if path.suffix.lower() != ".safetensors":
        return {}
    return read_header(data)


def read_metadata(filename: str) -> dict[str, Any]:
    """sd_models.read_metadata_from_safetensors: the header's `__metadata__` (values that are JSON are decoded)."""
    try:
        header = load_checkpoint(filename)
    except SafetensorError:
        return {}
    metadata = header.get("__metadata__", {})
    decoded: dict[str, Any] = {}
    for key, value in metadata.items() if isinstance(metadata, dict) else ():
        if isinstance(value, str) and value[0:1] == "{":
            try:
                decoded[key] = json.loads(value)
                continue
            except ValueError:
                pass
        decoded[key] = value
    return decoded
