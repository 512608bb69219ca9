"""The stand-in's image codecs: files a viewer can open, and metadata that reads back."""

from __future__ import annotations

import base64
import random
import struct
import zlib

import pytest

from sdtask.standin.images import (
    InvalidImageError,
    decode_image_payload,
    encode_gif,
    encode_png,
    fit_render_size,
    png_text,
    read_standin_metadata,
    render_gif,
    render_png,
    sniff_image,
)

METADATA = {"endpoint": "txt2img", "model": "m [0123456789]", "prompt": "", "seed": 1, "index": 0, "input_sha256": []}


def described(data: bytes) -> tuple[str, int | None, int | None]:
    info = sniff_image(data)
    assert info is not None
    return info.format, info.width, info.height


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Chunks of a PNG, checking every CRC on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, payload = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        chunks.append((kind, payload))
        position += 12 + length
    return chunks


def gif_frames(data: bytes) -> tuple[int, int, list[bytes]]:
    """A small independent GIF decoder (global palette, no interlace): width, height and each frame's indices."""
    width, height, flags = struct.unpack("<HHB", data[6:11])
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = []
    while data[position] != 0x3B:
        if data[position] == 0x21:
            position += 2
            while data[position]:
                position += data[position] + 1
            position += 1
            continue
        assert data[position] == 0x2C
        frame_width, frame_height = struct.unpack("<HH", data[position + 5 : position + 9])
        min_code_size = data[position + 10]
        position += 11
        stream = bytearray()
        while data[position]:
            stream += data[position + 1 : position + 1 + data[position]]
            position += data[position] + 1
        position += 1
        frames.append(lzw_decode(bytes(stream), min_code_size))
        assert len(frames[-1]) == frame_width * frame_height
    return width, height, frames


def lzw_decode(stream: bytes, min_code_size: int) -> bytes:
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    bits = int.from_bytes(stream, "little")
    offset, width, out = 0, min_code_size + 1, bytearray()
    table: list[bytes] = []
    previous: bytes | None = None
    while True:
        code = (bits >> offset) & ((1 << width) - 1)
        offset += width
        if code == clear:
            table = [bytes([value]) for value in range(clear)] + [b"", b""]
            width, previous = min_code_size + 1, None
            continue
        if code == end:
            return bytes(out)
        if previous is None:
            entry = table[code]
        else:
            entry = table[code] if code < len(table) else previous + previous[:1]
            table.append(previous + entry[:1])
            if len(table) == 1 << width and width < 12:
                width += 1
        out += entry
        previous = entry


def test_png_is_well_formed_with_requested_size_and_text_chunks() -> None:
    data = render_png(b"d" * 32, 96, 40, METADATA, parameters="a cat\nSteps: 20")
    chunks = dict(png_chunks(data))
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (width, height, depth, colour) == (96, 40, 8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == (96 * 3 + 1) * 40
    assert png_text(data)["parameters"] == "a cat\nSteps: 20"
    assert read_standin_metadata(data) == METADATA


def test_png_larger_than_the_render_cap_keeps_its_aspect_ratio() -> None:
    assert fit_render_size(4096, 2048) == (1024, 512)
    assert fit_render_size(300, 200) == (300, 200)
    assert described(render_png(b"d" * 32, 4096, 2048, METADATA)) == ("png", 1024, 512)


def test_metadata_with_non_latin1_prompt_reads_back() -> None:
    metadata = {**METADATA, "prompt": "猫 in the snow ☃"}
    assert read_standin_metadata(render_png(b"x" * 32, 8, 8, metadata, parameters="猫")) == metadata
    assert read_standin_metadata(render_gif(b"x" * 32, metadata, frames=2)) == metadata


def test_pattern_depends_on_the_digest_only() -> None:
    assert render_png(b"a" * 32, 64, 64, METADATA) == render_png(b"a" * 32, 64, 64, METADATA)
    images = [render_png(seed * 32, 64, 64, METADATA) for seed in (b"a", b"b", b"c")]
    pixels = {zlib.decompress(dict(png_chunks(image))[b"IDAT"]) for image in images}
    assert len(pixels) == 3


def test_gif_has_magic_frames_and_comment_metadata() -> None:
    data = render_gif(b"g" * 32, METADATA, frames=5, side=64)
    assert data[:6] == b"GIF89a" and data[-1:] == b";"
    width, height, frames = gif_frames(data)
    assert (width, height, len(frames)) == (64, 64, 5)
    assert len(set(frames)) > 1  # it moves
    assert read_standin_metadata(data) == METADATA


@pytest.mark.parametrize(("colours", "width", "height"), [(2, 7, 3), (16, 64, 64), (256, 120, 90)])
def test_gif_lzw_round_trips_noise_including_full_code_tables(colours: int, width: int, height: int) -> None:
    rng = random.Random(colours)
    frames = [bytes(rng.randrange(colours) for _ in range(width * height)) for _ in range(2)]
    palette = bytes(rng.randrange(256) for _ in range(colours * 3))
    assert gif_frames(encode_gif(width, height, palette, frames)) == (width, height, frames)


def test_encode_png_rejects_wrong_pixel_count() -> None:
    with pytest.raises(ValueError):
        encode_png(2, 2, b"\0" * 11)


def test_decode_image_payload_accepts_data_url_and_reports_sizes() -> None:
    png = render_png(b"p" * 32, 30, 20, METADATA)
    decoded = decode_image_payload("data:image/png;base64," + base64.b64encode(png).decode())
    assert decoded.data == png
    assert (decoded.info.format, decoded.info.width, decoded.info.height) == ("png", 30, 20)
    assert decode_image_payload(base64.b64encode(png).decode()).sha256 == decoded.sha256


def test_sniff_image_knows_the_formats_the_webui_accepts() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + struct.pack(">H", 4) + b"JF" + b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 48, 64)
    webp = b"RIFF\0\0\0\0WEBPVP8X" + b"\0" * 8 + (99).to_bytes(3, "little") + (49).to_bytes(3, "little")
    bmp = b"BM" + b"\0" * 16 + struct.pack("<ii", 10, -20)
    assert described(jpeg) == ("jpeg", 64, 48)
    assert described(webp) == ("webp", 100, 50)
    assert described(bmp) == ("bmp", 10, 20)
    assert described(render_gif(b"g" * 32, METADATA, frames=1, side=16)) == ("gif", 16, 16)
    assert sniff_image(b"hello world") is None


@pytest.mark.parametrize(
    "payload", ["https://example.com/cat.png", "", "not base64 at all!", base64.b64encode(b"plain text").decode(), 42]
)
def test_decode_image_payload_rejects_non_images(payload: object) -> None:
    with pytest.raises(InvalidImageError):
        decode_image_payload(payload)


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"\x89PNG\r\n\x1a\n\0\0", b"\xff\xd8\xff", b"random bytes"])
def test_read_standin_metadata_is_none_for_foreign_or_truncated_files(data: bytes) -> None:
    assert read_standin_metadata(data) is None
