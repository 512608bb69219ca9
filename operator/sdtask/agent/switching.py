"""The checkpoint a generation runs on: a static runtime's is checked, a dynamic one's is found (downloaded from the
runtime's model prefix if missing), switched to and read back, and reported to the operator for model affinity."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from sdtask.agent.failures import AttemptFailed
from sdtask.agent.models import ModelFetchError, fetch_checkpoint
from sdtask.checkpoints import same_checkpoint, split_hash
from sdtask.clients.kube import Kube
from sdtask.clients.s3 import S3Client
from sdtask.clients.webui import Checkpoint, WebUIClient, WebUIException, WebUIUnavailable, match_checkpoint
from sdtask.config import AgentSettings
from sdtask.modelreport import model_lease

log = logging.getLogger(__name__)

# How old the model read after a generation may be to stand for the next task's check (instead of asking when the next
# task comes, a round trip the GPU waits for: 12 ms p50 on the loaded 2-core bench machine). Only this agent switches
# models (the checkpoint is taken out of override_settings), so what may change it meanwhile is a Web UI restart (far
# slower than this), or someone else switching through the runtime's Service: that window is bounded by this age,
# against a few milliseconds when asking just before.
KNOWN_FOR_SECONDS = 1.0


def _same_hash(a: str, b: str) -> bool:
    """No conflicting hashes: "x [6ce0161689]" and "x.safetensors [6ce0161689]" agree, a name without one too."""
    first, second = split_hash(a)[1], split_hash(b)[1]
    return not first or not second or first.startswith(second) or second.startswith(first)


def _drop(future: asyncio.Future[str | None]) -> None:
    if future.done():
        if not future.cancelled():
            future.exception()  # retrieved: a failed read is simply not used
    else:
        future.cancel()


class ModelSwitcher:
    def __init__(self, settings: AgentSettings, kube: Kube, webui: WebUIClient, s3: S3Client) -> None:
        self.settings = settings
        self.kube = kube
        self.webui = webui
        self.s3 = s3
        # The loaded checkpoint as read right after our last generation, and when it was asked for: the next task's
        # check uses it while it is fresh (KNOWN_FOR_SECONDS).
        self._known: tuple[asyncio.Future[str | None], float] | None = None
        self._last_read: str | None = None  # the title the Web UI last gave for its loaded checkpoint

    def generation_ended(self, succeeded: bool, next_queued: bool, ran_on: str | None = None) -> None:
        """A generation returned, on `ran_on` as its answer says (its info's model name and hash). When that is the
        checkpoint last read, the answer stands for a fresh read. Else, unless the next task's call already waits in
        the Web UI's queue (it runs on this model, unchecked: agent/queueing.py), the loaded checkpoint is read now,
        in the background (/options takes no queue lock), for the next task's check. After a failed generation,
        nothing is assumed."""
        self.forget()
        if not succeeded:
            return
        last, now = self._last_read, time.monotonic()
        if ran_on and last and same_checkpoint(ran_on, last) and _same_hash(ran_on, last):
            confirmed: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            confirmed.set_result(last)
            self._known = confirmed, now
        elif not next_queued:
            self._known = asyncio.ensure_future(self._read()), now

    async def _read(self) -> str | None:
        self._last_read = await self.webui.loaded_checkpoint()
        return self._last_read

    def forget(self) -> None:
        if self._known is not None:
            _drop(self._known[0])
            self._known = None

    async def loaded(self) -> str | None:
        """The checkpoint loaded now: the one read after the last generation if that read is fresh, else asked for."""
        known, self._known = self._known, None
        if known is not None and time.monotonic() - known[1] <= KNOWN_FOR_SECONDS:
            reading = known[0]
            await asyncio.wait({reading})  # not `await reading`: cancelling this task must not look like a failed read
            if not reading.cancelled() and reading.exception() is None:
                return reading.result()
        elif known is not None:
            _drop(known[0])
        return await self._read()

    async def ensure(self, wanted: str | None, target: Checkpoint | None = None) -> str | None:
        """The checkpoint the generation will run on. Static runtimes never switch, and never generate on anything but
        their checkpoint (a Web UI whose --ckpt was missing falls back to another model). Dynamic ones check the
        model exists BEFORE unloading anything, and read the option back after the switch: a checkpoint that fails
        to load still answers 200 and leaves the old model in place."""
        try:
            loaded = await self.loaded()
            if not self.settings.dynamic_model:
                return self._require_static(loaded)
            if not wanted or same_checkpoint(loaded, wanted):
                return loaded or wanted
            target = target or await self.find(wanted)
            if target is None:
                where = f" (also looked in {self.settings.models_s3_prefix})" if self.settings.models_s3_prefix else ""
                raise AttemptFailed("ModelNotFound", f"model {wanted} not found{where}; {loaded} stays loaded")
            if loaded and split_hash(loaded)[0] == target.name:
                return loaded  # named by hash or sha256: already the loaded one
            await self.webui.switch_checkpoint(target.title)
            now_loaded = await self._read()
        except WebUIUnavailable as error:
            raise AttemptFailed("WebUIUnavailable", str(error), retryable=True) from None
        except WebUIException as error:
            raise AttemptFailed("ModelSwitchFailed", f"switching to {wanted} failed: {error}", retryable=True) from None
        if now_loaded is None or split_hash(now_loaded)[0] != target.name:
            await self.report(now_loaded)
            raise AttemptFailed(
                "ModelLoadFailed",
                f"the Web UI could not load {target.title} (a corrupt or truncated file, or out of memory?); "
                f"{now_loaded or 'no model'} stays loaded",
                retryable=True,
            )
        await self.report(now_loaded)
        return now_loaded

    def _require_static(self, loaded: str | None) -> str:
        expected = self.settings.checkpoint
        if expected and not same_checkpoint(loaded, expected):
            raise AttemptFailed(
                "ModelNotLoaded",
                f"the Web UI serves {loaded or 'no model'} instead of the runtime's checkpoint {expected} "
                "(missing from the models volume?); not generating on a fallback model",
                retryable=True,
            )
        return loaded or expected

    async def report(self, model: str | None) -> None:
        """Tell the operator which checkpoint this pod has loaded (model affinity reads it): in the pod's Lease, as
        the agent may write no pod (see sdtask/modelreport.py). Best effort: a failed report costs affinity, never
        the task (the task's own status says which model it ran on)."""
        if model:
            settings = self.settings
            lease = model_lease(settings.namespace, settings.pod_name, settings.pod_uid, settings.runtime, model)
            try:
                await self.kube.apply(lease)
            except Exception as error:
                log.warning("could not report the loaded model %s: %s", model, error)

    async def find(self, wanted: str) -> Checkpoint | None:
        found = match_checkpoint(wanted, await self.webui.list_checkpoints())
        if found is None:
            await self.webui.refresh_checkpoints()
            found = match_checkpoint(wanted, await self.webui.list_checkpoints())
        if found is None and self.settings.models_s3_prefix and await self._download(wanted):
            await self.webui.refresh_checkpoints()
            found = match_checkpoint(wanted, await self.webui.list_checkpoints())
        return found

    async def _download(self, wanted: str) -> bool:
        """Copy the checkpoint from the runtime's model prefix into the folder the Web UI scans (--ckpt-dir)."""
        try:
            fetched = await asyncio.to_thread(
                fetch_checkpoint,
                self.s3,
                self.settings.models_s3_prefix,
                wanted,
                Path(self.settings.models_dir),
                self.settings.max_model_bytes,
            )
        except ModelFetchError as error:
            log.info("model %s: %s", wanted, error)
            return False
        return fetched.path.is_file()
