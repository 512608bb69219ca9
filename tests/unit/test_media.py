"""Format detection from magic bytes and base64 decoding."""

from __future__ import annotations

import base64

import pytest

from sdtask.media import AVIF, GIF, JPEG, MP4, PNG, WEBP, MediaFormat, decode_image_payload, detect_format

PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 16
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
WEBP_BYTES = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 8
GIF_BYTES = b"GIF89a\x02\x00\x02\x00\x80\x00\x00"
MP4_BYTES = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG_BYTES, MediaFormat("png", "image/png")),
        (b"GIF87a\x01\x00\x01\x00", MediaFormat("gif", "image/gif")),
        (b"GIF89a\x01\x00\x01\x00", MediaFormat("gif", "image/gif")),
        (JPEG_BYTES, MediaFormat("jpg", "image/jpeg")),
        (WEBP_BYTES, MediaFormat("webp", "image/webp")),
        (MP4_BYTES, MediaFormat("mp4", "video/mp4")),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00", MP4),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", AVIF),
    ],
)
def test_detects_format_from_magic_bytes(data: bytes, expected: MediaFormat) -> None:
    assert detect_format(data) == expected


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"GIF90a", b"\x00\x00\x00\x18ftyp", b"\x89PNX\r\n"],
)
def test_unknown_or_truncated_bytes_default_to_png(data: bytes) -> None:
    assert detect_format(data) is PNG


def test_formats_are_frozen() -> None:
    with pytest.raises(AttributeError):
        PNG.extension = "gif"  # type: ignore[misc]  # assigning to a frozen field is the case under test


def test_decodes_plain_base64() -> None:
    assert decode_image_payload(base64.b64encode(PNG_BYTES).decode()) == PNG_BYTES


@pytest.mark.parametrize("mime", ["image/png", "image/gif", "application/octet-stream"])
def test_decodes_data_uri_whatever_the_declared_type(mime: str) -> None:
    encoded = base64.b64encode(GIF_BYTES).decode()
    assert decode_image_payload(f"data:{mime};base64,{encoded}") == GIF_BYTES


def test_decodes_data_uri_with_parameters_and_upper_case_prefix() -> None:
    encoded = base64.b64encode(JPEG_BYTES).decode()
    assert decode_image_payload(f"DATA:image/jpeg;name=x.jpg;base64,{encoded}") == JPEG_BYTES


def test_tolerates_line_wrapping_surrounding_space_and_missing_padding() -> None:
    encoded = base64.b64encode(WEBP_BYTES).decode()
    wrapped = "\n".join(encoded[i : i + 8] for i in range(0, len(encoded), 8))
    assert decode_image_payload(f"  {wrapped}\n") == WEBP_BYTES
    unpadded = base64.b64encode(b"abcd").decode().rstrip("=")
    assert decode_image_payload(unpadded) == b"abcd"


def test_decoded_bytes_give_the_real_format() -> None:
    encoded = base64.b64encode(MP4_BYTES).decode()
    assert detect_format(decode_image_payload(encoded)) is MP4
    assert detect_format(decode_image_payload(base64.b64encode(JPEG_BYTES).decode())) is JPEG
    assert detect_format(decode_image_payload(base64.b64encode(b"GIF87a..").decode())) is GIF
    assert detect_format(decode_image_payload(base64.b64encode(WEBP_BYTES).decode())) is WEBP


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("this is not base64!", "not valid base64"),
        ("https://example.com/cat.png", "not valid base64"),
        ("", "empty"),
        ("   ", "empty"),
        ("data:image/png;base64,", "empty"),
        ("data:image/png,iVBORw0KGgo=", "not base64-encoded"),
        ("data:image/png;base64", "malformed data URI"),
        ("====", "not valid base64"),
    ],
)
def test_garbage_raises_a_clear_value_error(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_image_payload(value)


def test_error_message_does_not_echo_a_huge_payload() -> None:
    garbage = "#" * 100_000
    with pytest.raises(ValueError) as caught:
        decode_image_payload(garbage)
    assert len(str(caught.value)) < 300
    assert "100000 chars" in str(caught.value)


def test_non_string_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a base64 string"):
        decode_image_payload(b"abcd")  # type: ignore[arg-type]  # the wrong type is the case under test


def test_webm_from_animatediff_is_detected_by_its_ebml_header() -> None:
    from sdtask.media import WEBM

    assert detect_format(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm") == WEBM
    assert (WEBM.extension, WEBM.content_type) == ("webm", "video/webm")
