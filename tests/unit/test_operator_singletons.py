"""The operator's once-per-process tasks (the housekeeper) start once, whichever object's memo copy asks first."""

from __future__ import annotations

import asyncio
import copy

import kopf

from sdtask.controller.main import start_once


def test_one_housekeeper_for_all_objects_although_kopf_copies_the_memo_per_object() -> None:
    async def scenario() -> int:
        started = 0
        release = asyncio.Event()

        async def housekeeper() -> None:
            nonlocal started
            started += 1
            await release.wait()

        operator_memo = kopf.Memo(singletons={})
        # kopf's inventory gives each object `copy.copy(memobase)`: an attribute set on one is not on the others.
        object_memos = [copy.copy(operator_memo) for _ in range(50)]
        tasks = {start_once(memo.singletons, "housekeeper", housekeeper) for memo in object_memos}
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)
        assert len(tasks) == 1
        return started

    assert asyncio.run(scenario()) == 1
