"""Who owns an output location `<prefix>/<id>`: the decisions of sdtask/ownership.py, and the marker's key."""

from __future__ import annotations

from typing import Any

from sdtask.naming import owner_key, record_key
from sdtask.ownership import Claim, Owner, claimed_message, decide, owner_exists, owner_of, stored_owner

ME = Owner("team-a", "render-1", "uid-1")


def test_the_marker_lies_outside_the_task_folder_and_no_output_key_can_be_it() -> None:
    assert owner_key("t2i", "twice") == ".sdtask-owners/t2i/twice.json"
    # a task whose prefix is the markers' folder writes keys ending in .out or an image extension, never .json
    assert record_key(".sdtask-owners/t2i", "twice") == ".sdtask-owners/t2i/twice/twice.out"
    assert not record_key(".sdtask-owners", "twice.json").endswith(".json")


def test_the_owner_comes_from_the_task_and_round_trips_through_its_marker() -> None:
    task = {"metadata": {"namespace": "team-a", "name": "render-1", "uid": "uid-1"}}
    assert owner_of(task) == ME and stored_owner(ME.marker()) == ME


def test_anything_but_a_complete_marker_names_no_owner() -> None:
    markers: list[Any] = [None, "x", [], {}, {"namespace": "a", "name": "b"}, {"namespace": "a", "name": "b", "uid": 3}]
    for marker in markers:
        assert stored_owner(marker) is None


def test_a_retry_of_the_same_task_owns_its_location() -> None:
    assert decide(ME, ME) is Claim.OURS
    assert decide(Owner("team-a", "render-1", "uid-1"), ME) is Claim.OURS


def test_another_task_of_the_namespace_is_checked_and_one_of_another_namespace_keeps_it() -> None:
    assert decide(Owner("team-a", "render-2", "uid-2"), ME) is Claim.CHECK_OWNER
    assert decide(Owner("team-a", "render-1", "uid-0"), ME) is Claim.CHECK_OWNER  # re-created under the same name
    assert decide(Owner("team-b", "render-1", "uid-9"), ME) is Claim.REFUSED
    assert decide(None, ME) is Claim.TAKE_OVER


def test_an_owner_exists_only_while_a_task_with_its_uid_does() -> None:
    owner = Owner("team-a", "render-2", "uid-2")
    assert owner_exists(owner, {"metadata": {"name": "render-2", "uid": "uid-2"}})
    assert not owner_exists(owner, {"metadata": {"name": "render-2", "uid": "uid-3"}})  # deleted, then re-created
    assert not owner_exists(owner, None)


def test_the_refusal_names_the_location_the_owner_and_what_to_do() -> None:
    message = claimed_message("s3://out/t2i/twice", Owner("team-a", "render-2", "uid-2"))
    assert "s3://out/t2i/twice" in message and "team-a/render-2" in message and "uid-2" in message
    assert "metadata.id" in message and "delete that task" in message
    foreign = claimed_message("s3://out/t2i/twice", Owner("team-b", "x", "u"), checked=False)
    assert "another namespace" in foreign and "delete" not in foreign
