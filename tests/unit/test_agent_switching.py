"""The model check between two generations, against the stand-in Web UI: what was read when the last generation
returned stands for the next check while it is fresh (no round trip while the GPU waits), never once it is stale or
after a failed generation, so a static runtime still refuses a Web UI that serves another model; and no read is made
when the next task's call already waits in the Web UI's queue (it runs on that model unchecked)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx
import pytest

from sdtask.agent import switching
from sdtask.agent.failures import AttemptFailed
from sdtask.agent.switching import ModelSwitcher
from sdtask.clients.webui import WebUIClient, answered_checkpoint
from sdtask.config import AgentSettings
from tests.standin_support import Start, titles

PAYLOAD = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64}


def options_reads(client: httpx.Client) -> int:
    return int(client.get("/standin/stats").json()["requests"].get("/sdapi/v1/options", 0))


def switcher(webui: WebUIClient, checkpoint: str) -> ModelSwitcher:
    settings = AgentSettings(pod_name="pod", namespace="ns", runtime="rt", checkpoint=checkpoint)
    return ModelSwitcher(settings, cast(Any, None), webui, cast(Any, None))  # no switch, no report: no Kube, no S3


async def generate_then_read(
    models: ModelSwitcher, webui: WebUIClient, client: httpx.Client, *, succeeded: bool = True
) -> None:
    """A generation, then (if it succeeded) the read its end starts, until the Web UI has answered it."""
    before = options_reads(client)
    await webui.generate("txt2img", PAYLOAD, 30)
    models.generation_ended(succeeded, next_queued=False)
    for _ in range(500):
        if not succeeded or options_reads(client) > before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no model read after the generation")


def test_right_after_a_generation_the_check_asks_the_web_ui_nothing(start: Start) -> None:
    client = start()
    alpha = titles(client)["alpha"]

    async def scenario() -> tuple[str | None, int, int]:
        async with WebUIClient(str(client.base_url)) as webui:
            models = switcher(webui, alpha)
            await generate_then_read(models, webui, client)
            before = options_reads(client)
            checked = await models.ensure(None)
            after_first = options_reads(client)
            await models.ensure(None)  # nothing generated since: asked again
            return checked, after_first - before, options_reads(client) - after_first

    checked, first, second = asyncio.run(scenario())
    assert checked == alpha
    assert (first, second) == (0, 1)


def test_a_stale_read_is_not_trusted_and_another_model_is_refused(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone switched the Web UI (through the runtime's Service) since the read: once the read is older than
    KNOWN_FOR_SECONDS, the check asks again and the static runtime refuses to generate on that model."""
    client = start()
    alpha, beta = titles(client)["alpha"], titles(client)["beta"]
    monkeypatch.setattr(switching, "KNOWN_FOR_SECONDS", 0.0)

    async def scenario() -> None:
        async with WebUIClient(str(client.base_url)) as webui:
            models = switcher(webui, alpha)
            await generate_then_read(models, webui, client)
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": beta})
            await models.ensure(None)

    with pytest.raises(AttemptFailed) as refused:
        asyncio.run(scenario())
    assert refused.value.reason == "ModelNotLoaded"


def test_after_a_failed_generation_nothing_is_assumed(start: Start) -> None:
    client = start()
    alpha, beta = titles(client)["alpha"], titles(client)["beta"]

    async def scenario() -> None:
        async with WebUIClient(str(client.base_url)) as webui:
            models = switcher(webui, alpha)
            await generate_then_read(models, webui, client, succeeded=False)
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": beta})
            await models.ensure(None)

    with pytest.raises(AttemptFailed) as refused:
        asyncio.run(scenario())
    assert refused.value.reason == "ModelNotLoaded"


def test_no_read_is_made_when_the_next_call_already_waits_in_the_web_ui_queue(start: Start) -> None:
    """That call runs on the model unchecked; a task that comes later asks the Web UI itself, so a switch made by
    someone else meanwhile is seen and refused."""
    client = start()
    alpha, beta = titles(client)["alpha"], titles(client)["beta"]

    async def scenario() -> None:
        async with WebUIClient(str(client.base_url)) as webui:
            models = switcher(webui, alpha)
            await webui.generate("txt2img", PAYLOAD, 30)
            models.generation_ended(True, next_queued=True)
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": beta})
            await models.ensure(None)

    with pytest.raises(AttemptFailed) as refused:
        asyncio.run(scenario())
    assert refused.value.reason == "ModelNotLoaded"


def test_an_answer_on_the_checkpoint_last_read_stands_for_a_read(start: Start) -> None:
    """Every generation's answer names the model it ran on (info: sd_model_name, sd_model_hash): when that is the
    checkpoint last read, the next check needs no round trip at all."""
    client = start()
    alpha = titles(client)["alpha"]

    async def scenario() -> tuple[str | None, str | None, int]:
        async with WebUIClient(str(client.base_url)) as webui:
            models = switcher(webui, alpha)
            await models.ensure(None)  # the first check reads the Web UI
            response = await webui.generate("txt2img", PAYLOAD, 30)
            ran_on = answered_checkpoint(response)
            before = options_reads(client)
            models.generation_ended(True, next_queued=False, ran_on=ran_on)
            checked = await models.ensure(None)
            return ran_on, checked, options_reads(client) - before

    ran_on, checked, reads = asyncio.run(scenario())
    assert ran_on is not None and ran_on.startswith("alpha [")
    assert (checked, reads) == (alpha, 0)


def test_an_answer_on_another_checkpoint_is_checked_against_the_web_ui(start: Start) -> None:
    client = start()
    alpha, beta = titles(client)["alpha"], titles(client)["beta"]

    async def scenario() -> None:
        async with WebUIClient(str(client.base_url)) as webui:
            models = switcher(webui, alpha)
            await models.ensure(None)
            await webui.generate("txt2img", PAYLOAD, 30)
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": beta})
            models.generation_ended(True, next_queued=False, ran_on="beta")  # not what was last read: read again
            await models.ensure(None)

    with pytest.raises(AttemptFailed) as refused:
        asyncio.run(scenario())
    assert refused.value.reason == "ModelNotLoaded"


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ('{"sd_model_name": "v1-5", "sd_model_hash": "6ce0161689"}', "v1-5 [6ce0161689]"),
        ('{"sd_model_name": "v1-5", "sd_model_hash": null}', "v1-5"),  # --no-hashing
        ('{"prompt": "x"}', None),
        ("not json", None),
        (None, None),
    ],
)
def test_the_checkpoint_an_answer_ran_on(info: str | None, expected: str | None) -> None:
    assert answered_checkpoint({"images": [], "info": info}) == expected
