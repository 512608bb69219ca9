"""S3 output naming: keys are a function of (prefix, id, index) only, so a retry overwrites its own outputs."""

from __future__ import annotations

import pytest

from sdtask.naming import (
    image_key,
    output_location,
    parse_s3_uri,
    record_key,
    s3_uri,
    validate_bucket,
    validate_key_part,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("output", "output"),
        ("team-a/outputs/2024", "team-a/outputs/2024"),
        ("output/", "output"),
        ("a.b..c", "a.b..c"),
        ("ünïcode prefix", "ünïcode prefix"),
        ("x" * 256, "x" * 256),
    ],
)
def test_valid_key_parts(value: str, expected: str) -> None:
    assert validate_key_part(value, "prefix") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must not be empty"),
        ("..", "'..'"),
        ("a/../b", "'..'"),
        ("./a", "'.'"),
        ("/abs", "must not start with '/'"),
        ("a\\b", "backslashes"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        ("a\x7fb", "control characters"),
        ("a//b", "empty"),
        ("///", "must not start with '/'"),
        ("x" * 257, "257 characters"),
    ],
)
def test_invalid_key_parts_name_the_field(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^prefix ") as caught:
        validate_key_part(value, "prefix")
    assert message in str(caught.value)


def test_an_id_is_a_single_segment() -> None:
    with pytest.raises(ValueError, match="id must not contain '/'"):
        validate_key_part("a/b", "id", allow_slash=False)
    assert validate_key_part("3f2c-uuid", "id", allow_slash=False) == "3f2c-uuid"


def test_non_string_is_refused() -> None:
    with pytest.raises(ValueError, match="id must be a string"):
        validate_key_part(12, "id")  # type: ignore[arg-type]  # the wrong type is the case under test


def test_output_location() -> None:
    assert output_location("bucket", "output", "test-i2i") == "s3://bucket/output/test-i2i"
    assert output_location("bucket", "a/b/", "t1") == "s3://bucket/a/b/t1"


def test_image_keys_are_numbered_from_one_within_the_task() -> None:
    assert image_key("output", "t1", 1, "png") == "output/t1/image-1.png"
    assert image_key("a/b", "t1", 12, "mp4") == "a/b/t1/image-12.mp4"


def test_same_task_gives_the_same_keys_so_a_retry_overwrites() -> None:
    first = [image_key("output", "t1", i, "png") for i in (1, 2)]
    retry = [image_key("output/", "t1", i, "png") for i in (1, 2)]
    assert first == retry and len(set(first)) == 2


@pytest.mark.parametrize("index", [0, -1, True, 1.0])
def test_image_index_must_be_a_positive_integer(index: object) -> None:
    with pytest.raises(ValueError, match="index"):
        image_key("output", "t1", index, "png")  # type: ignore[arg-type]  # wrong types under test


@pytest.mark.parametrize("extension", ["", ".png", "PNG", "p/g", "png\n"])
def test_image_extension_is_checked(extension: str) -> None:
    with pytest.raises(ValueError, match="extension"):
        image_key("output", "t1", 1, extension)


def test_key_builders_refuse_bad_prefix_and_id() -> None:
    with pytest.raises(ValueError, match="prefix"):
        image_key("../etc", "t1", 1, "png")
    with pytest.raises(ValueError, match="id"):
        record_key("output", "a/b")
    with pytest.raises(ValueError, match="id"):
        output_location("bucket", "output", "..")


def test_record_key() -> None:
    assert record_key("output", "test-i2i") == "output/test-i2i/test-i2i.out"


def test_s3_uri_and_parse_round_trip() -> None:
    uri = s3_uri("bucket", "output/t1/image-1.png")
    assert uri == "s3://bucket/output/t1/image-1.png"
    assert parse_s3_uri(uri) == ("bucket", "output/t1/image-1.png")


def test_parse_keeps_the_key_literal() -> None:
    assert parse_s3_uri("s3://b/a%20b?versionId=1") == ("b", "a%20b?versionId=1")
    assert parse_s3_uri("  S3://b/k  ") == ("b", "k")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://bucket/key", "not an S3 URI"),
        ("s3:/bucket/key", "not an S3 URI"),
        ("bucket/key", "not an S3 URI"),
        ("s3://", "no bucket"),
        ("s3:///key", "no bucket"),
        ("s3://bucket", "no object key"),
        ("s3://bucket/", "no object key"),
        ("s3://bu cket/key", "whitespace"),
    ],
)
def test_parse_errors_are_clear(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_s3_uri(uri)


def test_s3_uri_refuses_bad_parts() -> None:
    with pytest.raises(ValueError, match="bucket"):
        s3_uri("", "k")
    with pytest.raises(ValueError, match="must not start with '/'"):
        s3_uri("b", "/k")
    with pytest.raises(ValueError, match="non-empty"):
        s3_uri("b", "")
    with pytest.raises(ValueError, match="'/'"):
        validate_bucket("a/b")
