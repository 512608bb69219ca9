"""The stand-in's checkpoints and options: what modules/sd_models.py and the options API do with the model.

A mixin of `server.StandinWebUI` (its own section, kept apart for size): the server owns the state declared below
and the two locks; the methods here take them as the real functions take `shared.opts` and the queue lock.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sdtask.standin.checkpoints import CheckpointInfo, CheckpointList
from sdtask.standin.errors import webui_error
from sdtask.standin.fields import parse_json_object
from sdtask.standin.fifolock import FIFOLock
from sdtask.standin.options import DEFAULT_OPTIONS
from sdtask.standin.weights import SafetensorError, load_checkpoint

logger = logging.getLogger("sdtask.standin.server")

# sd_models.list_models: what the real server downloads when it finds no checkpoint (and may not, here).
SD15_URL = "https://huggingface.co/runwayml/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"


class CheckpointsAndOptions:
    """The listed checkpoints, the options, the loaded model; set up by `StandinWebUI.__init__`."""

    model_path: Path
    no_download_sd_model: bool
    no_hashing: bool
    load_delay: float
    _queue_lock: FIFOLock
    _state_lock: threading.Lock
    _stopping: threading.Event
    _checkpoints: CheckpointList
    _options: dict[str, Any]
    _model: CheckpointInfo | None
    _model_on_device: bool
    _model_loads: int

    def _list_models_at_start(self, ckpt: Path | None) -> None:
        """sd_models.list_models at startup: the --ckpt file becomes the selected model when it exists."""
        self._checkpoints.refresh()
        if self._checkpoints.ckpt_info is not None:
            self._options["sd_model_checkpoint"] = self._checkpoints.ckpt_info.title
        elif ckpt is not None:
            # The real message, on stderr; the server starts anyway and later loads another checkpoint it finds.
            print(
                f"Checkpoint in --ckpt argument not found (Possible it was moved to {self.model_path}: {ckpt}",
                file=sys.stderr,
                flush=True,
            )
        elif not self._checkpoints.items and not self.no_download_sd_model:
            # Without --ckpt and --no-download-sd-model the real server downloads SD 1.5 into the models folder;
            # load_models swallows a failed download, so it then starts with no checkpoint. The stand-in has no
            # internet by design: it always fails that download.
            print(
                f'Downloading: "{SD15_URL}" to {self.model_path / "v1-5-pruned-emaonly.safetensors"}', file=sys.stderr
            )
            print("stand-in: no network; the download failed and no checkpoint is listed", file=sys.stderr, flush=True)

    def _sd_models(self) -> list[dict[str, Any]]:
        with self._state_lock:
            return [checkpoint.as_api() for checkpoint in self._checkpoints.items]

    def _refresh_checkpoints(self) -> None:
        # api.py refresh_checkpoints: `with self.queue_lock: shared.refresh_checkpoints()`.
        with self._queue_lock, self._state_lock:
            self._checkpoints.refresh()
            count = len(self._checkpoints.items)
        logger.info("stand-in Web UI: %d checkpoint(s) after refresh", count)

    def _get_options(self) -> dict[str, Any]:
        with self._state_lock:
            return copy.deepcopy(self._options)

    def _set_options(self, body: bytes) -> None:
        """api.py set_config: an unknown checkpoint fails before anything changes; then `opts.set` per key, whose
        failing change hook (a checkpoint that does not load) puts the old value back; the answer is null anyway."""
        request = parse_json_object(body)
        wanted = request.get("sd_model_checkpoint")
        if wanted is not None:
            with self._state_lock:
                known = self._checkpoints.match(wanted) is not None
            if not known:
                raise webui_error(500, "RuntimeError", f"model {wanted!r} not found")
        for key, value in request.items():
            with self._state_lock:
                old = self._options.get(key)
                if old == value:  # Options.set: an unchanged value runs no hook, so nothing reloads
                    continue
                if key not in DEFAULT_OPTIONS:  # `self.data_labels[key]`; the keys before it stay set
                    raise webui_error(500, "KeyError", repr(key))
                self._options[key] = value
            if key != "sd_model_checkpoint":
                continue
            # The option's change hook: wrap_queued_call(reload_model_weights).
            try:
                with self._queue_lock:
                    self._reload_model_weights()
            except SafetensorError as error:
                logger.error("changing setting sd_model_checkpoint to %s: %s", value, error)
                with self._state_lock:
                    self._options[key] = old

    def _select_checkpoint(self) -> CheckpointInfo:
        """sd_models.select_checkpoint (state lock held): the option's checkpoint, else the first listed."""
        option = self._options.get("sd_model_checkpoint")
        found = self._checkpoints.match(option)
        if found is not None:
            return found
        if not self._checkpoints.items:
            raise FileNotFoundError(self._checkpoints.looked_at())
        fallback = self._checkpoints.items[0]
        if option is not None:
            print(f"Checkpoint {option} not found; loading fallback {fallback.title}", file=sys.stderr, flush=True)
        return fallback

    def _reload_model_weights(self, info: CheckpointInfo | None = None) -> CheckpointInfo:
        """sd_models.reload_model_weights (queue lock held): nothing to do if that file is the loaded model."""
        with self._state_lock:
            wanted = info or self._select_checkpoint()
            loaded = self._model
        if loaded is not None and loaded.filename == wanted.filename:
            if not self._model_on_device:
                self._move_to_device()
            return loaded
        self._load(wanted)
        return wanted

    def _load(self, info: CheckpointInfo, *, at_start: bool = False) -> None:
        """Load `info`'s weights, paying the load delay; raises SafetensorError and keeps the old model when the
        file does not load. The sha256 is computed first (get_checkpoint_state_dict -> calculate_shorthash), so even
        a file that fails to load has its hash, and so its `name [hash]` title, afterwards."""
        started = time.monotonic()
        with self._state_lock:
            if not self.no_hashing:
                info.calculate_shorthash()
                self._checkpoints.remember_hash(info)
        self._stopping.wait(self.load_delay)
        load_checkpoint(info.filename)
        with self._state_lock:
            self._model, self._model_on_device = info, True
            # load_model_weights: the option names the loaded model by its (now hashed) title.
            self._options["sd_model_checkpoint"] = info.title
            self._options["sd_checkpoint_hash"] = info.sha256
            if not at_start:
                self._model_loads += 1
        logger.info("stand-in Web UI: loaded %s in %.2fs", info.title, time.monotonic() - started)

    def _load_at_start(self) -> None:
        """initialize.py load_model thread -> model_data.get_sd_model: a failure is printed, the server stays up."""
        with self._queue_lock:
            try:
                with self._state_lock:
                    info = self._select_checkpoint()
                self._load(info, at_start=True)
            except (FileNotFoundError, SafetensorError) as error:
                print(f"loading stable diffusion model: {type(error).__name__}: {error}", file=sys.stderr)
                print("Stable diffusion model failed to load", file=sys.stderr, flush=True)

    def _move_to_device(self) -> None:
        """send_model_to_device (queue lock held): weights back from the CPU; the stand-in charges a load delay."""
        self._stopping.wait(self.load_delay)
        with self._state_lock:
            self._model_on_device = True

    def _unload(self) -> dict[str, Any]:
        """api.py unloadapi -> unload_model_weights: the weights go to the CPU; the option keeps its title.

        The real reload_model_weights returns early for the file already loaded, so nothing there moves the weights
        back before the next generation; what that generation then does on a GPU is not established from the
        source. The stand-in moves them back (charging the load delay) and generates; a client should call
        reload-checkpoint after an unload rather than rely on this.
        """
        with self._state_lock:
            self._model_on_device = False
        return {}

    def _reload(self) -> dict[str, Any]:
        """api.py reloadapi -> send_model_to_device: the weights come back from the CPU (no reading from disk)."""
        with self._queue_lock:
            with self._state_lock:
                needed = self._model is not None and not self._model_on_device
            if needed:
                self._move_to_device()
        return {}
