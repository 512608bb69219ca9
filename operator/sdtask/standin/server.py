"""A stand-in for the AUTOMATIC1111 Stable Diffusion Web UI (v1.10) API, for tests and local runs without a GPU.

It answers the endpoints sdtask uses with the real server's shapes and its observable behaviour: one generation at
a time behind a queue lock, interrupts that return the images finished so far, checkpoints listed from the folders
the real one scans (`checkpoints.py`), loads that can fail (`weights.py`), the real launch flags (`cli.py`), and the
same error bodies. Images are cheap and deterministic; each carries JSON metadata (see
`images.read_standin_metadata`) naming what produced it.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import logging
import math
import os
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sdtask.standin.checkpoints import CheckpointInfo, CheckpointList
from sdtask.standin.errors import ApiError, Payload, invalid_image_error, validation_error, webui_error
from sdtask.standin.fields import parse_json_object
from sdtask.standin.images import (
    DecodedImage,
    InvalidImageError,
    decode_image_payload,
    pattern_digest,
    render_png,
)
from sdtask.standin.options import DEFAULT_OPTIONS, default_options
from sdtask.standin.requests import (
    STANDIN_VERSION,
    Generation,
    Upscale,
    echoed_parameters,
    infotext,
    parse_generation,
    parse_upscale,
)
from sdtask.standin.scripts import script_info, scripts_list
from sdtask.standin.videos import render_video
from sdtask.standin.weights import SafetensorError, load_checkpoint

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024 * 1024
# How often a running job updates its progress; interrupts are noticed at once regardless.
PROGRESS_TICK_SECONDS = 0.02
# How long stop() may wait for the serving loop to notice; short, since tests start and stop many servers.
SHUTDOWN_POLL_SECONDS = 0.02
# sd_models.list_models: what the real server downloads when it finds no checkpoint (and may not, here).
SD15_URL = "https://huggingface.co/runwayml/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"

Handler = Callable[[bytes], Payload]
Response = tuple[int, Payload, dict[str, str]]


def parse_api_auth(value: str) -> dict[str, str]:
    """api.py `Api.__init__`: "user:pass,user2:pass2" -> {user: pass}; a pair without exactly one ':' fails there."""
    credentials = {}
    for pair in value.split(","):
        parts = pair.split(":")
        if len(parts) != 2:
            raise ValueError(f"not user:password: {pair!r}")
        credentials[parts[0]] = parts[1]
    return credentials


# --- progress ---------------------------------------------------------------------------------------------------


@dataclass
class JobState:
    """The real server's `shared.state`, as far as /progress shows it."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    time_start: float = field(default_factory=time.monotonic)

    def begin(self, job: str, job_count: int, sampling_steps: int) -> None:
        self.job, self.job_count, self.job_no = job, job_count, 0
        self.sampling_step, self.sampling_steps = 0, sampling_steps
        self.interrupted = self.skipped = False
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.time_start = time.monotonic()

    def end(self) -> None:
        self.job, self.job_count = "", 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": False,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }

    def progress(self) -> dict[str, Any]:
        if self.job_count <= 0:
            return {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": self.as_dict(),
                "current_image": None,
                "textinfo": None,
            }
        # The real formula: a small head start so that the ETA never divides by zero.
        done = 0.01 + self.job_no / self.job_count
        if self.sampling_steps > 0:
            done += self.sampling_step / self.sampling_steps / self.job_count
        elapsed = time.monotonic() - self.time_start
        return {
            "progress": min(done, 1.0),
            "eta_relative": elapsed / done - elapsed,
            "state": self.as_dict(),
            "current_image": None,
            "textinfo": None,
        }


# --- the server -------------------------------------------------------------------------------------------------


class StandinWebUI:
    """The stand-in Web UI: construct, `start()` (serves from a background thread), `url`, `stop()`.

    `data_dir` is `--data-dir`: checkpoints are listed from `<models_dir or data_dir/models>/Stable-diffusion` and
    `ckpt_dir`. `api_only` is `--nowebui` (no UI routes such as `/internal/ping`); without `api` or `api_only` the
    `/sdapi/v1` routes do not exist (the real UI mounts the API only with `--api`). Port 0 picks a free port.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        models_dir: Path | None = None,
        ckpt_dir: Path | None = None,
        ckpt: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api: bool = True,
        api_only: bool = False,
        api_auth: str | None = None,
        no_download_sd_model: bool = False,
        no_hashing: bool = False,
        load_at_start: bool = True,
        load_delay: float = 0.0,
        image_delay: float = 0.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        # paths_internal.py: models_path = --models-dir or <data-dir>/models; sd_models.model_path adds the folder.
        self.model_path = Path(os.path.abspath((models_dir or self.data_dir / "models") / "Stable-diffusion"))
        self.host, self._requested_port = host, port
        self.api_only = api_only
        self.serves_api = api or api_only
        self._credentials = parse_api_auth(api_auth) if api_auth else None
        self.no_download_sd_model, self.no_hashing = no_download_sd_model, no_hashing
        self.load_at_start = load_at_start
        self.load_delay, self.image_delay = max(0.0, load_delay), max(0.0, image_delay)
        # The queue lock serialises generations, model loads and refreshes, like the real server's; the state lock
        # guards the fields below and is never held while waiting.
        self._queue_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._interrupt = threading.Event()
        self._stopping = threading.Event()
        self._checkpoints = CheckpointList(self.model_path, ckpt_dir, ckpt)
        self._options: dict[str, Any] = default_options()
        self._model: CheckpointInfo | None = None  # model_data.sd_model's checkpoint; None until a load succeeds
        self._model_on_device = False  # unload-checkpoint sends the weights to the CPU
        self._job = JobState()
        self._requests: Counter[str] = Counter()
        self._model_loads = 0
        self._interrupts = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._loader: threading.Thread | None = None
        self._routes = self._route_table()
        self._list_models_at_start(ckpt)

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

    # lifecycle

    def start(self) -> StandinWebUI:
        if self._httpd is not None:
            raise RuntimeError("the stand-in Web UI is already running")
        self._stopping.clear()
        self._interrupt.clear()
        self._httpd = _HTTPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="standin-webui",
            daemon=True,
        )
        self._thread.start()
        if self._loader is None and self.load_at_start:
            # initialize.py: the model loads in a thread while the server already answers.
            self._loader = threading.Thread(target=self._load_at_start, name="standin-load-model", daemon=True)
            self._loader.start()
        logger.info("stand-in Web UI serving on %s with %d checkpoint(s)", self.url, len(self._checkpoints.items))
        return self

    def stop(self) -> None:
        """Stop serving; a running generation is cut short so that this returns promptly."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        self._interrupt.set()
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join()
        if self._loader is not None:
            self._loader.join()
        self._httpd = self._thread = None

    def __enter__(self) -> StandinWebUI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the stand-in Web UI is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def wait_until_loaded(self, timeout: float = 10.0) -> bool:
        """Wait for the startup load (tests); True if it finished."""
        if self._loader is not None:
            self._loader.join(timeout)
            return not self._loader.is_alive()
        return True

    # dispatch

    def _route_table(self) -> dict[str, dict[str, Handler]]:
        routes: dict[str, dict[str, Handler]] = {}
        if not self.api_only:
            # modules/ui.py setup_ui_api -> only when the Gradio UI is built (not with --nowebui).
            routes["/internal/ping"] = {"GET": lambda _: {}}
        if self.serves_api:
            routes.update(
                {
                    "/sdapi/v1/txt2img": {"POST": lambda body: self._generate("txt2img", body)},
                    "/sdapi/v1/img2img": {"POST": lambda body: self._generate("img2img", body)},
                    "/sdapi/v1/extra-single-image": {"POST": self._extra_single_image},
                    "/sdapi/v1/extra-batch-images": {"POST": self._extra_batch_images},
                    "/sdapi/v1/progress": {"GET": lambda _: self._progress()},
                    "/sdapi/v1/interrupt": {"POST": lambda _: self._interrupt_job()},
                    "/sdapi/v1/options": {"GET": lambda _: self._get_options(), "POST": self._set_options},
                    "/sdapi/v1/sd-models": {"GET": lambda _: self._sd_models()},
                    "/sdapi/v1/refresh-checkpoints": {"POST": lambda _: self._refresh_checkpoints()},
                    "/sdapi/v1/unload-checkpoint": {"POST": lambda _: self._unload()},
                    "/sdapi/v1/reload-checkpoint": {"POST": lambda _: self._reload()},
                    "/sdapi/v1/memory": {"GET": lambda _: memory_report()},
                    "/sdapi/v1/scripts": {"GET": lambda _: scripts_list()},
                    "/sdapi/v1/script-info": {"GET": lambda _: script_info()},
                }
            )
        routes["/standin/stats"] = {"GET": lambda _: self.stats()}  # the stand-in's own, never behind auth
        return routes

    def handle_request(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
        """Answer one request: (status, JSON payload, extra headers). Never raises."""
        with self._state_lock:
            self._requests[path] += 1
        methods = self._routes.get(path)
        if methods is None:
            return 404, {"detail": "Not Found"}, {}
        handler = methods.get(method)
        if handler is None:
            return 405, {"detail": "Method Not Allowed"}, {}
        if path.startswith("/sdapi/") and self._credentials is not None:
            refused = self._refuse_unauthorised(headers or {})
            if refused is not None:
                return refused
        try:
            return 200, handler(body), {}
        except ApiError as error:
            return error.status, error.payload, {}
        except Exception as error:  # the real server turns any exception into this body, and so do we
            logger.exception("stand-in Web UI: %s %s failed", method, path)
            return 500, webui_error(500, type(error).__name__, str(error)).payload, {}

    def _refuse_unauthorised(self, headers: Mapping[str, str]) -> Response | None:
        """api.py `Api.auth` behind FastAPI's HTTPBasic: every /sdapi route, before the body is even read."""
        challenge = {"WWW-Authenticate": "Basic"}
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, encoded = value.partition(" ")
        if not value or scheme.lower() != "basic":
            return 401, {"detail": "Not authenticated"}, challenge
        try:
            user, separator, password = base64.b64decode(encoded).decode("ascii").partition(":")
        except (ValueError, UnicodeDecodeError):
            return 401, {"detail": "Invalid authentication credentials"}, challenge
        expected = (self._credentials or {}).get(user) if separator else None
        if expected is None or not secrets.compare_digest(password, expected):
            return 401, {"detail": "Incorrect username or password"}, challenge
        return None

    # checkpoints and options

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

    # generation

    def _generate(self, endpoint: str, body: bytes) -> dict[str, Any]:
        generation = parse_generation(endpoint, parse_json_object(body))
        with self._queue_lock:
            timestamp = self._begin_job(f"scripts_{endpoint}", generation.n_iter, generation.steps)
            with self._state_lock:
                # process_images: the current values of the overridden keys that are options, to restore after.
                stored = {k: self._options[k] for k in generation.override_settings if k in self._options}
            try:
                checkpoint = self._apply_override_settings(generation)
                frames = self._render_generation(generation, checkpoint)
                with self._state_lock:
                    options = dict(self._options)
            finally:
                if generation.restore_settings:
                    with self._state_lock:
                        self._options.update(stored)
                self._end_job()
        output = assemble_output(generation, checkpoint, frames, options)
        return self._generation_response(generation, checkpoint, output, timestamp)

    def _apply_override_settings(self, generation: Generation) -> CheckpointInfo:
        """processing.process_images (queue lock held): load the model the request runs on and set the overrides.

        An `sd_model_checkpoint` override naming no known checkpoint is dropped silently and the selected model is
        made sure of; the others are set without their change hooks (`opts.set(..., run_callbacks=False)`; an
        unknown key is a KeyError, 500), a checkpoint override then loaded. Restoring afterwards (the caller, with
        `override_settings_restore_afterwards`) only puts the options back: the weights swap back at the next request
        that needs them, not now. A model that fails to load fails the request (500).
        """
        overrides = dict(generation.override_settings)
        with self._state_lock:
            known_model = self._checkpoints.match(overrides.get("sd_model_checkpoint")) is not None
        checkpoint = None
        if not known_model:
            if overrides.pop("sd_model_checkpoint", None) is not None:
                logger.warning("stand-in Web UI: override checkpoint not found, ignored")
            checkpoint = self._reload_model_weights()
        for key, value in overrides.items():
            with self._state_lock:
                if self._options.get(key) == value:
                    continue
                if key not in DEFAULT_OPTIONS:
                    raise webui_error(500, "KeyError", repr(key))
                self._options[key] = value
            if key == "sd_model_checkpoint":
                checkpoint = self._reload_model_weights()
        if checkpoint is None:
            checkpoint = self._reload_model_weights()
        return checkpoint

    def _begin_job(self, job: str, job_count: int, sampling_steps: int) -> str:
        """Start the job state (queue lock held); an interrupt sent before this point is forgotten, as in the real
        server. Returns the job timestamp."""
        with self._state_lock:
            self._interrupt.clear()
            if self._stopping.is_set():
                self._interrupt.set()
            self._job.begin(job, job_count, sampling_steps)
            return self._job.job_timestamp

    def _end_job(self) -> None:
        with self._state_lock:
            self._job.end()

    def _render_generation(self, generation: Generation, checkpoint: CheckpointInfo) -> list[bytes]:
        """Spend `image_delay` per image; stop at an interrupt with the images finished so far."""
        images: list[bytes] = []
        for batch in range(generation.n_iter):
            with self._state_lock:
                self._job.job_no, self._job.sampling_step = batch, 0
            for slot in range(generation.batch_size):

                def report(fraction: float, slot: int = slot) -> None:
                    self._job.sampling_step = int(generation.steps * (slot + fraction) / generation.batch_size)

                if not self._spend(self.image_delay, report):
                    return images
                images.append(self._render_image(generation, checkpoint, len(images)))
        return images

    def _spend(self, seconds: float, report: Callable[[float], None]) -> bool:
        """Wait `seconds` in small ticks, reporting the fraction done; False as soon as an interrupt comes."""
        deadline = time.monotonic() + seconds
        while not self._interrupt.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            with self._state_lock:
                report(1.0 - remaining / seconds)
            if self._interrupt.wait(min(PROGRESS_TICK_SECONDS, remaining)):
                break
        return False

    def _render_image(self, generation: Generation, checkpoint: CheckpointInfo, index: int) -> bytes:
        seed = generation.seed + index
        metadata = {
            "endpoint": generation.endpoint,
            "model": checkpoint.title,
            "prompt": generation.prompt,
            "seed": seed,
            "index": index,
            "input_sha256": generation.input_sha256,
            "width": generation.width,
            "height": generation.height,
        }
        digest = pattern_digest(generation.endpoint, checkpoint.title, generation.prompt, seed, generation.input_sha256)
        return render_png(digest, generation.width, generation.height, metadata, infotext(generation, checkpoint, seed))

    def _generation_response(
        self, generation: Generation, checkpoint: CheckpointInfo, output: Output, timestamp: str
    ) -> dict[str, Any]:
        count = generation.image_count
        seeds = [generation.seed + offset for offset in range(count)]
        subseeds = [generation.subseed + offset for offset in range(count)]
        info = {
            "prompt": generation.prompt,
            "all_prompts": [generation.prompt] * count,
            "negative_prompt": generation.negative_prompt,
            "all_negative_prompts": [generation.negative_prompt] * count,
            "seed": generation.seed,
            "all_seeds": seeds,
            "subseed": generation.subseed,
            "all_subseeds": subseeds,
            "subseed_strength": generation.subseed_strength,
            "width": generation.width,
            "height": generation.height,
            "sampler_name": generation.sampler_name,
            "cfg_scale": generation.cfg_scale,
            "steps": generation.steps,
            "batch_size": generation.batch_size,
            "restore_faces": generation.restore_faces,
            "face_restoration_model": None,
            "sd_model_name": checkpoint.name_for_extra,
            "sd_model_hash": checkpoint.shorthash,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": generation.denoising_strength,
            "extra_generation_params": {},
            "index_of_first_image": output.index_of_first_image,
            "infotexts": output.infotexts,
            "styles": [],
            "job_timestamp": timestamp,
            "clip_skip": 1,
            "is_using_inpainting_conditioning": False,
            "version": STANDIN_VERSION,
        }
        encoded = [base64.b64encode(image).decode("ascii") for image in output.images] if generation.send_images else []
        return {"images": encoded, "parameters": echoed_parameters(generation), "info": json.dumps(info)}

    # extras (upscaling)

    def _extra_single_image(self, body: bytes) -> dict[str, Any]:
        request = parse_json_object(body)
        try:
            source = decode_image_payload(request.get("image", ""))
        except InvalidImageError as error:
            raise invalid_image_error("image", error) from error
        upscale = parse_upscale(request)
        [image] = self._run_extras("extra-single-image", [source], upscale)
        return {"html_info": upscale.html_info(source), "image": base64.b64encode(image).decode("ascii")}

    def _extra_batch_images(self, body: bytes) -> dict[str, Any]:
        request = parse_json_object(body)
        if "imageList" not in request:  # ExtrasBatchImagesRequest.imageList has no default
            raise validation_error(["imageList"], "field required", "value_error.missing")
        items = request["imageList"]
        if not isinstance(items, list):
            raise validation_error(["imageList"], "value is not a valid list", "type_error.list")
        sources = []
        for position, item in enumerate(items):
            # models.py FileData: `data` and `name` are both required strings.
            for key in ("data", "name"):
                if not isinstance(item, dict) or key not in item:
                    raise validation_error(["imageList", position, key], "field required", "value_error.missing")
                if not isinstance(item[key], str):
                    raise validation_error(["imageList", position, key], "str type expected", "type_error.str")
            try:
                sources.append(decode_image_payload(item["data"]))
            except InvalidImageError as error:
                raise invalid_image_error(f"imageList[{position}]", error) from error
        upscale = parse_upscale(request)
        images = self._run_extras("extra-batch-images", sources, upscale)
        html_info = upscale.html_info(sources[0]) if sources else "<p></p>"
        return {"html_info": html_info, "images": [base64.b64encode(image).decode("ascii") for image in images]}

    def _run_extras(self, endpoint: str, sources: list[DecodedImage], upscale: Upscale) -> list[bytes]:
        """Upscale each source in the queue, `image_delay` each; postprocessing is not interruptible here."""
        outputs = []
        with self._queue_lock:
            self._begin_job("extras", len(sources), 0)
            try:
                for index, source in enumerate(sources):
                    with self._state_lock:
                        self._job.job_no = index
                    self._stopping.wait(self.image_delay)
                    outputs.append(upscale.render(endpoint, source, index))
            finally:
                self._end_job()
        return outputs

    # progress, interrupt, stats

    def _progress(self) -> dict[str, Any]:
        with self._state_lock:
            return self._job.progress()

    def _interrupt_job(self) -> dict[str, Any]:
        with self._state_lock:
            self._job.interrupted = True
            self._interrupt.set()
            self._interrupts += 1
        logger.info("stand-in Web UI: interrupt requested")
        return {}

    def stats(self) -> dict[str, Any]:
        """Stand-in-only counters: requests per path, model loads and interrupts since start, the loaded model."""
        with self._state_lock:
            return {
                "requests": dict(self._requests),
                "model_loads": self._model_loads,
                "interrupts": self._interrupts,
                "loaded_model": self._model.title if self._model else None,
                "model_on_device": self._model_on_device,
            }


@dataclass(frozen=True)
class Output:
    """What a generation returns: `images` (grid first when there is one), their infotexts, where the images begin."""

    images: list[bytes]
    infotexts: list[str]
    index_of_first_image: int


def grid_rows(count: int, batch_size: int, n_rows: int) -> int:
    """images.image_grid: `n_rows` > 0 as given, 0 = the batch size, else the largest divisor <= sqrt(count)."""
    if n_rows > 0:
        return n_rows
    if n_rows == 0:
        return batch_size
    rows = max(1, math.isqrt(count))
    while count % rows:
        rows -= 1
    return rows


def assemble_output(
    generation: Generation, checkpoint: CheckpointInfo, frames: list[bytes], options: dict[str, Any]
) -> Output:
    """process_images_inner's ending, then the always-on scripts' postprocess (AnimateDiff's output).

    A grid exists when the request saves images (`save_images`, else `do_not_save_grid`), the options want one
    (`return_grid` or `grid_save`) and there are at least 2 images unless `grid_only_if_multiple` is off; with
    `return_grid` it comes first, with its own infotext first, and `index_of_first_image` is 1. AnimateDiff then
    replaces the images with its videos but leaves `index_of_first_image` as it was.
    """
    seeds = [generation.seed + index for index in range(len(frames))]
    infotexts = [infotext(generation, checkpoint, seed) for seed in seeds]
    images = list(frames)
    first = 0
    wants_grid = options.get("return_grid", True) or options.get("grid_save", True)
    too_few = len(frames) < 2 and options.get("grid_only_if_multiple", True)
    if generation.save_images and wants_grid and frames and not too_few and options.get("return_grid", True):
        rows = grid_rows(len(frames), generation.batch_size, int(options.get("n_rows", -1)))
        columns = math.ceil(len(frames) / rows)
        width, height = generation.width * columns, generation.height * rows
        metadata = {
            "endpoint": generation.endpoint,
            "model": checkpoint.title,
            "prompt": generation.prompt,
            "grid": True,
            "seeds": seeds,
            "input_sha256": generation.input_sha256,
            "width": width,
            "height": height,
        }
        digest = pattern_digest(generation.endpoint, "grid", checkpoint.title, generation.prompt, seeds)
        text = infotext(generation, checkpoint, generation.seed)
        images.insert(0, render_png(digest, width, height, metadata, text))
        infotexts.insert(0, text)
        first = 1
    animation = generation.animation
    if animation is not None and animation.videos and frames:
        videos: list[bytes] = []
        last_chunk: list[bytes] = []
        for start in range(0, len(frames), max(animation.video_length, animation.batch_size)):
            last_chunk = frames[start : start + animation.video_length]
            seed = seeds[start]
            for kind in animation.videos:
                metadata = {
                    "endpoint": generation.endpoint,
                    "model": checkpoint.title,
                    "prompt": generation.prompt,
                    "seed": seed,
                    "index": len(videos),
                    "format": kind,
                    "frames": len(last_chunk),
                    "fps": animation.fps,
                    "input_sha256": generation.input_sha256,
                    "width": generation.width,
                    "height": generation.height,
                }
                digest = pattern_digest(generation.endpoint, kind, checkpoint.title, generation.prompt, seed)
                videos.append(
                    render_video(kind, digest, metadata, frames=len(last_chunk), fps=animation.fps, loop=animation.loop)
                )
        images = videos + (last_chunk if animation.returns_frames else [])
    return Output(images=images, infotexts=infotexts, index_of_first_image=first)


def memory_report() -> dict[str, Any]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = free = 0
    return {
        "ram": {"free": free, "used": total - free, "total": total},
        "cuda": {"error": "no CUDA device: this is the sdtask stand-in Web UI"},
    }


# --- HTTP plumbing ----------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection must not block stop()

    def __init__(self, address: tuple[str, int], app: StandinWebUI) -> None:
        self.app = app
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        logger.debug("stand-in Web UI: connection from %s failed", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients polling /progress expect
    server_version = "sdtask-standin/1"
    timeout = 300  # drop idle connections eventually
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for a delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def _answer(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._send(413, {"detail": "Request body too large"})
            return
        app = self.server.app if isinstance(self.server, _HTTPServer) else None
        if app is None:  # pragma: no cover - the handler only runs under _HTTPServer
            self._send(500, {"detail": "no application"})
            return
        status, payload, headers = app.handle_request(method, urlsplit(self.path).path, body, dict(self.headers))
        self._send(status, payload, headers)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        for chunk in self._chunks():
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            size = int(size_line or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers, up to the blank line
                    pass
                return
            yield self.rfile.read(size)
            self.rfile.readline(1024)  # the CRLF after each chunk

    def _send(self, status: int, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting; nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("stand-in Web UI: %s %s", self.address_string(), format % args)
