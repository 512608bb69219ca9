"""The `.out` records (ours and the old queue agent's layout) and reading a Web UI response."""

from __future__ import annotations

import json

from sdtask.records import RecordContext, failure_record, result_images, seeds, success_record

CONTEXT = RecordContext("t1", "rt", "text-to-image", "pod-1", 1, "v1-5 [abc]", "2026-01-01T00:00:00Z", "later")


def response(images: list[str], **info: object) -> dict[str, object]:
    return {"images": images, "parameters": {"prompt": "cat", "batch_size": 2}, "info": json.dumps(info)}


def test_the_grid_the_real_server_puts_first_is_skipped_so_image_n_matches_seed_n() -> None:
    answer = response(["grid", "a", "b"], index_of_first_image=1, all_seeds=[11, 12])
    assert result_images(answer) == ["a", "b"]
    assert seeds(answer) == [11, 12]


def test_without_a_grid_every_image_counts() -> None:
    assert result_images(response(["a", "b"], index_of_first_image=0)) == ["a", "b"]
    assert result_images({"image": "x", "html_info": ""}) == ["x"]
    # an index that would leave nothing is no grid marker we understand: keep what came
    assert result_images(response(["a"], index_of_first_image=1)) == ["a"]


def test_our_record_has_what_was_asked_and_what_came_back() -> None:
    record = success_record(CONTEXT, ["s3://b/o/t1/image-1.png"], response(["a"], all_seeds=[7]), legacy=False)
    assert record["id"] == "t1" and record["model"] == "v1-5 [abc]" and record["seeds"] == [7]
    assert record["images"] == ["s3://b/o/t1/image-1.png"] and record["error"] is None


def test_a_legacy_task_gets_the_old_agents_success_layout() -> None:
    record = success_record(CONTEXT, ["s3://b/o/t1/image-1.png"], response(["a", "b"], all_seeds=[7, 8]), legacy=True)
    assert set(record) == {"images", "parameters", "info"}
    assert record["info"] == ""
    assert record["parameters"] == {
        "prompt": "cat",
        "batch_size": 2,
        "id_task": "t1",
        "image_seed": "7,8",
        "error_msg": "",
    }


def test_a_legacy_extras_task_gets_html_info() -> None:
    record = success_record(CONTEXT, ["s3://x"], {"image": "a", "html_info": "<p>2x</p>"}, legacy=True)
    assert record["parameters"] == {"html_info": "<p>2x</p>", "id_task": "t1", "error_msg": ""}


def test_a_legacy_failure_keeps_the_web_uis_error_body_as_reason() -> None:
    error = {"error": "RuntimeError", "detail": "", "body": "", "errors": "boom"}
    record = failure_record(CONTEXT, "WebUIError", "Web UI answered HTTP 500: boom", error, legacy=True)
    assert record == {
        "images": [""],
        "parameters": {
            "id_task": "t1",
            "status": 0,
            "image_seed": [],
            "error_msg": "WebUIError: Web UI answered HTTP 500: boom",
            "reason": error,
        },
        "info": "",
    }
    ours = failure_record(CONTEXT, "Timeout", "took too long", legacy=False)
    assert ours["error"] == {"reason": "Timeout", "message": "took too long"} and ours["images"] == []


def test_animatediff_videos_are_never_taken_for_a_grid() -> None:
    from sdtask.request import makes_videos

    payload = {"alwayson_scripts": {"AnimateDiff": {"args": [{"enable": True, "format": ["GIF", "MP4"]}]}}}
    assert makes_videos(payload) and not makes_videos({"alwayson_scripts": {"animatediff": {"args": [{}]}}})
    answer = response(["gif", "mp4"], index_of_first_image=1)
    assert result_images(answer, videos=True) == ["gif", "mp4"]


def test_a_success_record_is_recognised_in_both_layouts() -> None:
    from sdtask.records import is_success_record

    ours_ok = {"id": "t", "images": ["s3://b/p/t/image-1.png"], "error": None}
    ours_failed = {"id": "t", "images": [], "error": {"reason": "Timeout", "message": "..."}}
    legacy_ok = {"images": [""], "parameters": {"id_task": "t", "image_seed": "1", "error_msg": ""}, "info": ""}
    legacy_failed = {"images": [""], "parameters": {"id_task": "t", "status": 0, "error_msg": "x"}, "info": ""}
    assert is_success_record(ours_ok) and is_success_record(legacy_ok)
    assert not any(is_success_record(r) for r in (ours_failed, legacy_failed, None, "x", {}))
