"""Tiny stdlib-only image codecs for the stand-in Web UI.

Writes PNG (RGB, with text chunks) and animated GIF89a (LZW, with a comment extension), recognises the input
formats the real Web UI accepts by their headers, and reads back the `sdtask-standin` metadata that every
stand-in image carries, so tests can tell which request, model, seed and input images produced a file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

METADATA_KEY = "sdtask-standin"

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGICS = (b"GIF87a", b"GIF89a")
JPEG_MAGIC = b"\xff\xd8\xff"
BMP_MAGIC = b"BM"

# Rendering is pure Python: larger requested sizes are reported as asked but drawn no bigger than this.
MAX_RENDER_SIDE = 1024
# Pixel pattern: a grid of flat-coloured cells, cheap to build row by row.
_GRID_CELLS = 8
_GIF_PALETTE_SIZE = 16
_GIF_MAX_CODE = 4096


class InvalidImageError(ValueError):
    """An input that is not base64 image data."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class DecodedImage:
    data: bytes
    info: ImageInfo

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# --- input decoding ---------------------------------------------------------------------------------------------


def decode_image_payload(encoded: object) -> DecodedImage:
    """Decode a base64 image like the Web UI does: optional `data:image/...;base64,` prefix, then base64.

    Raises InvalidImageError (with a short reason, never the payload) when it is not a recognised image.
    """
    if not isinstance(encoded, str):
        raise InvalidImageError(f"expected a base64 string, got {type(encoded).__name__}")
    text = encoded.strip()
    if text.startswith(("http://", "https://")):
        raise InvalidImageError(f"got a URL ({_preview(text)}), not base64 image data")
    if text.startswith("data:image/"):
        _, _, text = text.partition(",")
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as error:
        raise InvalidImageError(f"not valid base64 ({error})") from error
    info = sniff_image(data)
    if info is None:
        raise InvalidImageError(f"not a PNG, JPEG, GIF, WebP or BMP image (starts with {_preview(text)})")
    return DecodedImage(data, info)


def _preview(text: str) -> str:
    return repr(text[:32] + ("..." if len(text) > 32 else ""))


def sniff_image(data: bytes) -> ImageInfo | None:
    """Format and, where the header tells it, size of an encoded image; None if it is no image format we know."""
    if data.startswith(PNG_MAGIC):
        return _png_info(data)
    if data.startswith(GIF_MAGICS):
        return _gif_info(data)
    if data.startswith(JPEG_MAGIC):
        return ImageInfo("jpeg", *_jpeg_size(data))
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageInfo("webp", *_webp_size(data))
    if data.startswith(BMP_MAGIC) and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return ImageInfo("bmp", abs(width), abs(height))
    return None


def _png_info(data: bytes) -> ImageInfo | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return ImageInfo("png", width, height)


def _gif_info(data: bytes) -> ImageInfo | None:
    if len(data) < 10:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return ImageInfo("gif", width, height)


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    """Walk the JPEG segments up to the first start-of-frame marker, which holds the size."""
    position = 2
    while position + 9 <= len(data):
        if data[position] != 0xFF:
            return None, None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        position += 2 + length
    return None, None


def _webp_size(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None, None


# --- pixel patterns ---------------------------------------------------------------------------------------------


def pattern_digest(*parts: object) -> bytes:
    """A sha256 over the things that decide an image, so equal inputs draw equal pixels."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).digest()


def _byte_stream(digest: bytes, count: int) -> bytes:
    blocks = (hashlib.sha256(digest + index.to_bytes(4, "big")).digest() for index in range(count // 32 + 1))
    return b"".join(blocks)[:count]


def fit_render_size(width: int, height: int, limit: int = MAX_RENDER_SIDE) -> tuple[int, int]:
    """The size actually drawn for a requested size: same aspect ratio, no side above `limit`, at least 1."""
    width, height = max(1, width), max(1, height)
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _cell_edges(length: int) -> list[int]:
    return [length * cell // _GRID_CELLS for cell in range(_GRID_CELLS + 1)]


def pattern_rgb(digest: bytes, width: int, height: int) -> bytes:
    """Raw RGB rows of a grid of coloured cells picked by `digest`."""
    colours = _byte_stream(digest, _GRID_CELLS * _GRID_CELLS * 3)
    columns, rows = _cell_edges(width), _cell_edges(height)
    out = []
    for row in range(_GRID_CELLS):
        cells = ((row * _GRID_CELLS + column) * 3 for column in range(_GRID_CELLS))
        line = b"".join(
            colours[start : start + 3] * (columns[column + 1] - columns[column]) for column, start in enumerate(cells)
        )
        out.append(line * (rows[row + 1] - rows[row]))
    return b"".join(out)


def _pattern_indices(digest: bytes, width: int, height: int, shift: int) -> bytes:
    """Palette indices of the cell grid, rotated by `shift` cells so successive GIF frames move."""
    cells = _byte_stream(digest, _GRID_CELLS * _GRID_CELLS)
    columns, rows = _cell_edges(width), _cell_edges(height)
    out = []
    for row in range(_GRID_CELLS):
        line = b"".join(
            bytes([cells[row * _GRID_CELLS + (column + shift) % _GRID_CELLS] % _GIF_PALETTE_SIZE])
            * (columns[column + 1] - columns[column])
            for column in range(_GRID_CELLS)
        )
        out.append(line * (rows[row + 1] - rows[row]))
    return b"".join(out)


def metadata_text(metadata: dict[str, Any]) -> str:
    # ASCII-only JSON: PNG tEXt is Latin-1, and prompts may hold any character.
    return json.dumps(metadata, ensure_ascii=True, sort_keys=True, separators=(",", ":"))


# --- PNG --------------------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_text_chunk(key: str, value: str) -> bytes:
    value = value.replace("\0", "")
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        # iTXt: keyword, no compression, empty language tag and translated keyword, UTF-8 text.
        return _png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def encode_png(width: int, height: int, rgb: bytes, text: Sequence[tuple[str, str]] = ()) -> bytes:
    """An 8-bit RGB PNG of raw row-major `rgb` pixels, with the given text chunks."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"expected {width * height * 3} bytes of RGB, got {len(rgb)}")
    stride = width * 3
    # Filter type 0 (None) on every scanline: the flat cells compress well without filtering.
    raw = b"".join(b"\0" + rgb[offset : offset + stride] for offset in range(0, len(rgb), stride))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    chunks += [_png_text_chunk(key, value) for key, value in text]
    chunks += [_png_chunk(b"IDAT", zlib.compress(raw, 6)), _png_chunk(b"IEND", b"")]
    return PNG_MAGIC + b"".join(chunks)


def render_png(
    digest: bytes, width: int, height: int, metadata: dict[str, Any], parameters: str | None = None
) -> bytes:
    """The stand-in's still image: pattern from `digest`, drawn at the capped size, metadata in a tEXt chunk."""
    draw_width, draw_height = fit_render_size(width, height)
    text = [(METADATA_KEY, metadata_text(metadata))]
    if parameters is not None:
        text.insert(0, ("parameters", parameters))  # where the real Web UI puts its infotext
    return encode_png(draw_width, draw_height, pattern_rgb(digest, draw_width, draw_height), text)


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    position = len(PNG_MAGIC)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        if len(payload) < length:
            return
        yield kind, payload
        if kind == b"IEND":
            return
        position += 12 + length


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG, keyword -> text."""
    texts: dict[str, str] = {}
    for kind, payload in _png_chunks(data):
        if kind == b"tEXt" and b"\0" in payload:
            key, _, value = payload.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
    return texts


# --- GIF --------------------------------------------------------------------------------------------------------


class _BitWriter:
    """Packs variable-width codes least-significant bit first, as GIF's LZW stream wants."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._buffer = 0
        self._bits = 0

    def write(self, code: int, width: int) -> None:
        self._buffer |= code << self._bits
        self._bits += width
        while self._bits >= 8:
            self._out.append(self._buffer & 0xFF)
            self._buffer >>= 8
            self._bits -= 8

    def finish(self) -> bytes:
        if self._bits:
            self._out.append(self._buffer & 0xFF)
        return bytes(self._out)


def lzw_encode(indices: bytes, min_code_size: int) -> bytes:
    """GIF-flavoured LZW of palette indices (codes grow to 12 bits, then the table is cleared)."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    writer = _BitWriter()
    table: dict[tuple[int, int], int] = {}
    next_code, width = end + 1, min_code_size + 1
    writer.write(clear, width)
    prefix = -1
    for index in indices:
        if prefix < 0:
            prefix = index
            continue
        known = table.get((prefix, index))
        if known is not None:
            prefix = known
            continue
        writer.write(prefix, width)
        table[(prefix, index)] = next_code
        next_code += 1
        # The decoder adds each entry one code later, so widen only once a code that needs it can be sent.
        if next_code > (1 << width) and width < 12:
            width += 1
        if next_code >= _GIF_MAX_CODE:
            writer.write(clear, width)
            table.clear()
            next_code, width = end + 1, min_code_size + 1
        prefix = index
    if prefix >= 0:
        writer.write(prefix, width)
    writer.write(end, width)
    return writer.finish()


def _sub_blocks(payload: bytes) -> bytes:
    blocks = [bytes([len(part)]) + part for part in (payload[i : i + 255] for i in range(0, len(payload), 255))]
    return b"".join(blocks) + b"\0"


def encode_gif(
    width: int,
    height: int,
    palette: bytes,
    frames: Sequence[bytes],
    *,
    delay_cs: int = 12,
    loop: int = 0,
    comment: str | None = None,
) -> bytes:
    """An animated GIF89a: one global palette (2..256 colours), frames of palette indices, looping `loop` times
    (0 = forever), each shown `delay_cs` hundredths of a second, and an optional comment extension."""
    colours = len(palette) // 3
    table_bits = max(1, (colours - 1).bit_length())
    palette = palette.ljust(3 << table_bits, b"\0")
    min_code_size = max(2, table_bits)
    screen = struct.pack("<HHBBB", width, height, 0x80 | ((table_bits - 1) << 4) | (table_bits - 1), 0, 0)
    parts = [b"GIF89a", screen, palette]
    parts.append(b"\x21\xff\x0bNETSCAPE2.0" + struct.pack("<BBH", 3, 1, loop) + b"\0")
    if comment is not None:
        parts.append(b"\x21\xfe" + _sub_blocks(comment.encode("utf-8")))
    for frame in frames:
        if len(frame) != width * height:
            raise ValueError(f"expected {width * height} palette indices per frame, got {len(frame)}")
        # Graphic control: dispose to background (2), no transparency.
        parts.append(b"\x21\xf9\x04" + struct.pack("<BHB", 2 << 2, delay_cs, 0) + b"\0")
        parts.append(b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0))
        parts.append(bytes([min_code_size]) + _sub_blocks(lzw_encode(frame, min_code_size)))
    parts.append(b"\x3b")
    return b"".join(parts)


def render_gif(
    digest: bytes, metadata: dict[str, Any], *, frames: int, side: int = 64, fps: int = 8, loop: int = 0
) -> bytes:
    """The stand-in's animation: `frames` small frames of a moving cell grid, metadata in a comment extension."""
    palette = _byte_stream(digest + b"palette", _GIF_PALETTE_SIZE * 3)
    images = [_pattern_indices(digest, side, side, shift) for shift in range(frames)]
    delay_cs = max(2, round(100 / max(1, fps)))
    return encode_gif(side, side, palette, images, delay_cs=delay_cs, loop=loop, comment=metadata_text(metadata))


def gif_comments(data: bytes) -> list[str]:
    """The comment extensions of a GIF, in order (empty if the block structure is broken)."""
    if len(data) < 13 or not data.startswith(GIF_MAGICS):
        return []
    flags = data[10]
    position = 13 + (3 << ((flags & 0x07) + 1) if flags & 0x80 else 0)
    comments: list[str] = []
    while position < len(data):
        introducer = data[position]
        if introducer == 0x3B:
            break
        if introducer == 0x21 and position + 1 < len(data):
            label = data[position + 1]
            payload, position = _read_sub_blocks(data, position + 2)
            if label == 0xFE:
                comments.append(payload.decode("utf-8", errors="replace"))
        elif introducer == 0x2C and position + 10 <= len(data):
            local = data[position + 9]
            position += 10 + (3 << ((local & 0x07) + 1) if local & 0x80 else 0)
            _, position = _read_sub_blocks(data, position + 1)  # skip the LZW minimum code size byte, then data
        else:
            break
    return comments


def _read_sub_blocks(data: bytes, position: int) -> tuple[bytes, int]:
    payload = bytearray()
    while position < len(data):
        size = data[position]
        position += 1
        if size == 0:
            return bytes(payload), position
        payload += data[position : position + size]
        position += size
    return bytes(payload), len(data)


# --- metadata ---------------------------------------------------------------------------------------------------


def read_standin_metadata(image_bytes: bytes) -> dict[str, Any] | None:
    """The `sdtask-standin` metadata of an image or video the stand-in made (PNG tEXt, GIF comment, the MP4, WebP and
    WebM layouts of `videos.py`), else None."""
    if image_bytes.startswith(PNG_MAGIC):
        texts = [png_text(image_bytes).get(METADATA_KEY)]
    elif image_bytes.startswith(GIF_MAGICS):
        texts = list(gif_comments(image_bytes))
    else:
        from sdtask.standin.videos import video_metadata  # videos builds on this module

        return video_metadata(image_bytes)
    for text in texts:
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict) and "endpoint" in value:
            return value
    return None
