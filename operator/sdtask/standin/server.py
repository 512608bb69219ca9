"""A stand-in for the AUTOMATIC1111 Stable Diffusion Web UI API, for tests and local runs without a GPU.

It answers the endpoints sdtask uses with the real server's shapes and its observable behaviour: one generation at
a time behind a queue lock, interrupts that return the images finished so far, checkpoints listed from a folder,
slow model switches that happen only when the model changes, and the same error bodies. Images are cheap and
deterministic; each carries JSON metadata (see `images.read_standin_metadata`) naming what produced it.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from sdtask.standin.images import (
    DecodedImage,
    InvalidImageError,
    decode_image_payload,
    pattern_digest,
    render_gif,
    render_png,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7860  # the real Web UI's
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
# Guards so that a silly request cannot pin the server: the real one would just run for hours.
MAX_IMAGES_PER_REQUEST = 64
MAX_SIDE = 16384
MAX_ANIMATION_FRAMES = 64
MAX_BODY_BYTES = 256 * 1024 * 1024
# How often a running job updates its progress; interrupts are noticed at once regardless.
PROGRESS_TICK_SECONDS = 0.02
# How long stop() may wait for the serving loop to notice; short, since tests start and stop many servers.
SHUTDOWN_POLL_SECONDS = 0.02
STANDIN_VERSION = "sdtask-standin"

Payload = Any
Handler = Callable[[bytes], Payload]


# --- errors -----------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP status and JSON body."""

    def __init__(self, status: int, payload: Payload) -> None:
        super().__init__(f"{status}: {payload}")
        self.status = status
        self.payload = payload


def webui_error(status: int, error: str, errors: str, detail: str = "") -> ApiError:
    """The real server's body for exceptions raised by its handlers."""
    return ApiError(status, {"error": error, "detail": detail, "body": "", "errors": errors})


def validation_error(location: list[str | int], message: str, kind: str) -> ApiError:
    """FastAPI's 422 body for a request that does not fit the endpoint's model."""
    return ApiError(422, {"detail": [{"loc": ["body", *location], "msg": message, "type": kind}]})


def invalid_image_error(where: str, error: InvalidImageError) -> ApiError:
    return webui_error(500, "HTTPException", f"Invalid encoded image: {where}: {error}", detail="Invalid encoded image")


# --- checkpoints ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A model file, described the way the Web UI lists it."""

    name: str  # path relative to the models folder, with `/`
    filename: str  # absolute path
    sha256: str  # of the relative name, not the (possibly huge) contents

    @property
    def hash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"

    @property
    def model_name(self) -> str:
        return os.path.splitext(self.name.replace("/", "_"))[0]

    @property
    def name_for_extra(self) -> str:
        return os.path.splitext(os.path.basename(self.name))[0]

    def aliases(self) -> tuple[str, ...]:
        """Names that select this checkpoint: the real server's aliases, plus the absolute path."""
        names = (self.title, self.name, self.model_name, self.hash, self.sha256, f"{self.model_name} [{self.hash}]")
        return (*names, self.filename)

    def as_api(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.hash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": None,
        }


def scan_checkpoints(models_dir: Path) -> list[Checkpoint]:
    """Every checkpoint file under `models_dir` (recursively, like the Web UI), sorted by name."""
    if not models_dir.is_dir():
        return []
    found = []
    for path in models_dir.rglob("*"):
        if path.suffix.lower() in CHECKPOINT_SUFFIXES and path.is_file():
            name = path.relative_to(models_dir).as_posix()
            found.append(Checkpoint(name, str(path.resolve()), hashlib.sha256(name.encode()).hexdigest()))
    return sorted(found, key=lambda checkpoint: checkpoint.name.lower())


# --- request parsing --------------------------------------------------------------------------------------------


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise ApiError(422, {"detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]})
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        position = getattr(error, "pos", 0)
        raise validation_error([position], f"invalid JSON: {error}", "value_error.jsondecode") from error
    if not isinstance(value, dict):
        raise validation_error([], "value is not a valid dict", "type_error.dict")
    return value


def int_field(
    body: dict[str, Any], key: str, default: int, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = body.get(key)
    if value is None:
        return default
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise validation_error([key], "value is not a valid integer", "type_error.integer")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise validation_error([key], f"ensure {minimum} <= value <= {maximum}", "value_error.number.not_in_range")
    return number


def float_field(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise validation_error([key], "value is not a valid float", "type_error.float")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise validation_error([key], "value is not a valid float", "type_error.float") from error


def str_field(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise validation_error([key], "str type expected", "type_error.str")
    return value


def bool_field(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise validation_error([key], "value could not be parsed to a boolean", "type_error.bool")


def dict_field(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise validation_error([key], "value is not a valid dict", "type_error.dict")
    return value


@dataclass(frozen=True)
class Animation:
    """What the AnimateDiff extension was asked for, when it was asked for a GIF."""

    frames: int
    fps: int
    loop: int


def parse_animatediff(scripts: dict[str, Any]) -> Animation | None:
    """AnimateDiff's options from `alwayson_scripts`, or None unless it is enabled with GIF among its formats."""
    entry = next((value for key, value in scripts.items() if key.lower() == "animatediff"), None)
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list) or not args or not isinstance(args[0], dict):
        return None
    options = args[0]
    formats = options.get("format", ["GIF"])
    formats = [formats] if isinstance(formats, str) else formats
    wants_gif = isinstance(formats, list) and any(isinstance(item, str) and "gif" in item.lower() for item in formats)
    if not options.get("enable", True) or not wants_gif:
        return None
    frames = int_field(options, "video_length", 4)
    return Animation(
        frames=min(frames, MAX_ANIMATION_FRAMES) if frames > 0 else 4,
        fps=int_field(options, "fps", 8, minimum=1, maximum=100),
        loop=int_field(options, "loop_number", 0, minimum=0, maximum=65535),
    )


@dataclass(frozen=True)
class Generation:
    """A txt2img or img2img request, with the real server's defaults filled in."""

    endpoint: str
    body: dict[str, Any]
    prompt: str
    negative_prompt: str
    seed: int
    subseed: int
    subseed_strength: float
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler_name: str
    batch_size: int
    n_iter: int
    denoising_strength: float | None
    restore_faces: bool
    model_override: str | None
    restore_settings: bool
    send_images: bool
    animation: Animation | None
    inputs: tuple[DecodedImage, ...] = ()

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    @property
    def input_sha256(self) -> list[str]:
        return [image.sha256 for image in self.inputs]


def derived_seed(endpoint: str, body: dict[str, Any], salt: str) -> int:
    """What seed -1 becomes: random in the real server, a hash of the request here so tests can repeat it."""
    return int.from_bytes(pattern_digest(endpoint, salt, body)[:4], "big") % 4294967294


def decode_inputs(body: dict[str, Any]) -> tuple[DecodedImage, ...]:
    """img2img's init images, then its mask if any, decoded; the real server's errors when they are missing/bad."""
    encoded = body.get("init_images")
    if not encoded:
        raise webui_error(404, "HTTPException", "404: Init image not found", detail="Init image not found")
    if not isinstance(encoded, list):
        raise validation_error(["init_images"], "value is not a valid list", "type_error.list")
    decoded = []
    for position, item in enumerate(encoded):
        try:
            decoded.append(decode_image_payload(item))
        except InvalidImageError as error:
            raise invalid_image_error(f"init_images[{position}]", error) from error
    if body.get("mask"):
        try:
            decoded.append(decode_image_payload(body["mask"]))
        except InvalidImageError as error:
            raise invalid_image_error("mask", error) from error
    return tuple(decoded)


def parse_generation(endpoint: str, body: dict[str, Any]) -> Generation:
    batch_size = int_field(body, "batch_size", 1, minimum=1, maximum=MAX_IMAGES_PER_REQUEST)
    n_iter = int_field(body, "n_iter", 1, minimum=1, maximum=MAX_IMAGES_PER_REQUEST)
    if batch_size * n_iter > MAX_IMAGES_PER_REQUEST:
        raise validation_error(["n_iter"], f"batch_size * n_iter must be <= {MAX_IMAGES_PER_REQUEST}", "value_error")
    seed = int_field(body, "seed", -1)
    subseed = int_field(body, "subseed", -1)
    override = dict_field(body, "override_settings").get("sd_model_checkpoint")
    is_img2img = endpoint == "img2img"
    return Generation(
        endpoint=endpoint,
        body=body,
        prompt=str_field(body, "prompt", ""),
        negative_prompt=str_field(body, "negative_prompt", ""),
        seed=derived_seed(endpoint, body, "seed") if seed == -1 else seed,
        subseed=derived_seed(endpoint, body, "subseed") if subseed == -1 else subseed,
        subseed_strength=float_field(body, "subseed_strength", 0.0),
        width=int_field(body, "width", 512, minimum=1, maximum=MAX_SIDE),
        height=int_field(body, "height", 512, minimum=1, maximum=MAX_SIDE),
        steps=int_field(body, "steps", 50, minimum=1, maximum=10000),
        cfg_scale=float_field(body, "cfg_scale", 7.0),
        sampler_name=str_field(body, "sampler_name", "") or str_field(body, "sampler_index", "Euler"),
        batch_size=batch_size,
        n_iter=n_iter,
        denoising_strength=float_field(body, "denoising_strength", 0.75) if is_img2img else None,
        restore_faces=bool_field(body, "restore_faces", False),
        model_override=override if isinstance(override, str) else None,
        restore_settings=bool_field(body, "override_settings_restore_afterwards", True),
        send_images=bool_field(body, "send_images", True),
        animation=parse_animatediff(dict_field(body, "alwayson_scripts")),
        inputs=decode_inputs(body) if is_img2img else (),
    )


def echoed_parameters(generation: Generation) -> dict[str, Any]:
    """The request as received; img2img drops its images unless `include_init_images`, as the real one does."""
    parameters = dict(generation.body)
    if generation.endpoint == "img2img" and not bool_field(parameters, "include_init_images", False):
        parameters["init_images"] = None
        parameters["mask"] = None
    return parameters


def infotext(generation: Generation, checkpoint: Checkpoint, seed: int) -> str:
    """The "parameters" text the real server writes into PNGs and returns in `info.infotexts`."""
    settings = {
        "Steps": generation.steps,
        "Sampler": generation.sampler_name,
        "CFG scale": generation.cfg_scale,
        "Seed": seed,
        "Size": f"{generation.width}x{generation.height}",
        "Model hash": checkpoint.hash,
        "Model": checkpoint.name_for_extra,
        "Denoising strength": generation.denoising_strength,
        "Version": STANDIN_VERSION,
    }
    line = ", ".join(f"{key}: {value}" for key, value in settings.items() if value is not None)
    negative = f"\nNegative prompt: {generation.negative_prompt}" if generation.negative_prompt else ""
    return f"{generation.prompt}{negative}\n{line}".strip()


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
    """The stand-in Web UI: construct, `start()` (serves from a background thread), `url`, `stop()`."""

    def __init__(
        self,
        models_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        load_delay: float = 0.0,
        image_delay: float = 0.0,
        initial_model: str | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.host, self._requested_port = host, port
        self.load_delay, self.image_delay = max(0.0, load_delay), max(0.0, image_delay)
        # The queue lock serialises generations and model loads, like the real server's; the state lock guards
        # the fields below and is never held while waiting.
        self._queue_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._interrupt = threading.Event()
        self._stopping = threading.Event()
        self._checkpoints = scan_checkpoints(self.models_dir)
        self._selected = self._initial_checkpoint(initial_model)  # the `sd_model_checkpoint` option
        self._loaded = self._selected  # what is in (pretend) VRAM; loaded at startup without delay
        self._options: dict[str, Any] = default_options()
        self._job = JobState()
        self._requests: Counter[str] = Counter()
        self._model_loads = 0
        self._interrupts = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes = self._route_table()

    def _initial_checkpoint(self, wanted: str | None) -> Checkpoint | None:
        """The model loaded at start; like the real server given a `--ckpt` it cannot find, fall back to the
        first one (with a warning) rather than refuse to start."""
        first = self._checkpoints[0] if self._checkpoints else None
        if wanted is None:
            return first
        found = self._resolve(wanted) or self._resolve(Path(wanted).name)
        if found is None:
            fallback = first.title if first else "nothing"
            logger.warning("stand-in Web UI: initial model %r not in %s; loading %s", wanted, self.models_dir, fallback)
        return found or first

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
        logger.info("stand-in Web UI serving on %s with %d checkpoint(s)", self.url, len(self._checkpoints))
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

    # dispatch

    def _route_table(self) -> dict[str, dict[str, Handler]]:
        return {
            "/internal/ping": {"GET": lambda _: {}},
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
            "/standin/stats": {"GET": lambda _: self.stats()},
        }

    def handle_request(self, method: str, path: str, body: bytes) -> tuple[int, Payload]:
        """Answer one request: (status, JSON payload). Never raises."""
        with self._state_lock:
            self._requests[path] += 1
        methods = self._routes.get(path)
        if methods is None:
            return 404, {"detail": "Not Found"}
        handler = methods.get(method)
        if handler is None:
            return 405, {"detail": "Method Not Allowed"}
        try:
            return 200, handler(body)
        except ApiError as error:
            return error.status, error.payload
        except Exception as error:  # the real server turns any exception into this body, and so do we
            logger.exception("stand-in Web UI: %s %s failed", method, path)
            return 500, webui_error(500, type(error).__name__, str(error)).payload

    # checkpoints and options

    def _resolve(self, wanted: object) -> Checkpoint | None:
        if not isinstance(wanted, str):
            return None
        with_aliases = ((checkpoint, checkpoint.aliases()) for checkpoint in self._checkpoints)
        return next((checkpoint for checkpoint, aliases in with_aliases if wanted in aliases), None)

    def _sd_models(self) -> list[dict[str, Any]]:
        with self._state_lock:
            return [checkpoint.as_api() for checkpoint in self._checkpoints]

    def _refresh_checkpoints(self) -> None:
        with self._queue_lock:
            found = scan_checkpoints(self.models_dir)
            with self._state_lock:
                self._checkpoints = found
        logger.info("stand-in Web UI: %d checkpoint(s) after refresh", len(found))

    def _get_options(self) -> dict[str, Any]:
        with self._state_lock:
            options = copy.deepcopy(self._options)
            selected = self._selected if self._loaded is not None else None
        options["sd_model_checkpoint"] = selected.title if selected else None
        options["sd_checkpoint_hash"] = selected.sha256 if selected else None
        return options

    def _set_options(self, body: bytes) -> None:
        request = parse_json_object(body)
        wanted = request.pop("sd_model_checkpoint", None)
        checkpoint = None
        if wanted is not None:
            with self._state_lock:
                checkpoint = self._resolve(wanted)
            if checkpoint is None:  # checked before anything changes, as the real server does
                raise webui_error(500, "RuntimeError", f"model {wanted!r} not found")
        with self._state_lock:
            self._options.update(request)
        if checkpoint is None:
            return
        # The real server reloads from the option's change hook, inside its queue lock, and only when the option's
        # value changes: selecting the selected model again loads nothing, even after an unload.
        with self._queue_lock:
            with self._state_lock:
                unchanged = checkpoint == self._selected
            if not unchanged:
                self._ensure_loaded(checkpoint)

    def _unload(self) -> dict[str, Any]:
        with self._state_lock:
            self._loaded = None
        return {}

    def _reload(self) -> dict[str, Any]:
        """Load the selected model again if it was unloaded; a no-op when a model is loaded."""
        with self._queue_lock:
            with self._state_lock:
                wanted = None if self._loaded is not None else self._current_choice()
            if wanted is not None:
                self._ensure_loaded(wanted)
        return {}

    def _current_choice(self) -> Checkpoint | None:
        """The model a generation would load (state lock held): the selected one, else the first listed."""
        if self._selected is not None and self._selected in self._checkpoints:
            return self._selected
        return self._checkpoints[0] if self._checkpoints else None

    def _ensure_loaded(self, checkpoint: Checkpoint) -> None:
        """Make `checkpoint` the loaded and selected model, paying the load delay if it was not loaded (queue lock
        held)."""
        with self._state_lock:
            if self._loaded == checkpoint:
                self._selected = checkpoint
                return
        started = time.monotonic()
        self._stopping.wait(self.load_delay)
        with self._state_lock:
            self._loaded = self._selected = checkpoint
            self._model_loads += 1
        logger.info("stand-in Web UI: loaded %s in %.2fs", checkpoint.title, time.monotonic() - started)

    # generation

    def _generate(self, endpoint: str, body: bytes) -> dict[str, Any]:
        generation = parse_generation(endpoint, parse_json_object(body))
        with self._queue_lock:
            timestamp = self._begin_job(f"scripts_{endpoint}", generation.n_iter, generation.steps)
            try:
                checkpoint = self._checkout_model(generation)
                images = self._render_generation(generation, checkpoint)
            finally:
                self._end_job()
        return self._generation_response(generation, checkpoint, images, timestamp)

    def _checkout_model(self, generation: Generation) -> Checkpoint:
        """Load the model the request runs on, the way `process_images` does, and return it (queue lock held).

        An override naming no known checkpoint is dropped silently, like the real server does. Restoring the
        option afterwards only resets the selection: the model swaps back at the next request, not now.
        """
        with self._state_lock:
            previous = self._current_choice()
            override = self._resolve(generation.model_override)
        if generation.model_override is not None and override is None:
            logger.warning("stand-in Web UI: override checkpoint %r not found, ignored", generation.model_override)
        checkpoint = override or previous
        if checkpoint is None:
            raise webui_error(
                500,
                "FileNotFoundError",
                f"No checkpoints found. When searching for checkpoints, looked at: - directory {self.models_dir}",
            )
        self._ensure_loaded(checkpoint)
        if override is not None and generation.restore_settings:
            with self._state_lock:
                self._selected = previous
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

    def _render_generation(self, generation: Generation, checkpoint: Checkpoint) -> list[bytes]:
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

    def _render_image(self, generation: Generation, checkpoint: Checkpoint, index: int) -> bytes:
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
        animation = generation.animation
        if animation is not None:
            return render_gif(digest, metadata, frames=animation.frames, fps=animation.fps, loop=animation.loop)
        return render_png(digest, generation.width, generation.height, metadata, infotext(generation, checkpoint, seed))

    def _generation_response(
        self, generation: Generation, checkpoint: Checkpoint, images: list[bytes], timestamp: str
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
            "sd_model_hash": checkpoint.hash,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": generation.denoising_strength,
            "extra_generation_params": {},
            "index_of_first_image": 0,
            "infotexts": [infotext(generation, checkpoint, seeds[index]) for index in range(len(images))],
            "styles": [],
            "job_timestamp": timestamp,
            "clip_skip": 1,
            "is_using_inpainting_conditioning": False,
            "version": STANDIN_VERSION,
        }
        encoded = [base64.b64encode(image).decode("ascii") for image in images] if generation.send_images else []
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
        items = request.get("imageList", [])
        if not isinstance(items, list):
            raise validation_error(["imageList"], "value is not a valid list", "type_error.list")
        sources = []
        for position, item in enumerate(items):
            if not isinstance(item, dict) or "data" not in item:
                raise validation_error(["imageList", position, "data"], "field required", "value_error.missing")
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
                "loaded_model": self._loaded.title if self._loaded else None,
            }


def default_options() -> dict[str, Any]:
    """A few of the real server's options, so clients reading them find realistic values."""
    return {
        "samples_format": "png",
        "sd_checkpoints_limit": 1,
        "sd_checkpoints_keep_in_cpu": True,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "enable_pnginfo": True,
        "jpeg_quality": 80,
        "outdir_samples": "",
        "api_enable_requests": True,
        "api_forbid_local_requests": True,
    }


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


@dataclass(frozen=True)
class Upscale:
    """An extras request's resize: by a factor (`resize_mode` 0) or to a size (1)."""

    mode: int
    factor: float
    to_width: int
    to_height: int
    upscaler: str

    def size(self, source: DecodedImage) -> tuple[int, int]:
        if self.mode == 1:
            return self.to_width, self.to_height
        width, height = source.info.width or 512, source.info.height or 512
        return max(1, round(width * self.factor)), max(1, round(height * self.factor))

    def html_info(self, source: DecodedImage) -> str:
        width, height = self.size(source)
        how = f"to: {width}x{height}" if self.mode == 1 else f"by: {self.factor:g}"
        return f"<p>Postprocess upscale {how}, Postprocess upscaler: {self.upscaler}, Size: {width}x{height}</p>"

    def render(self, endpoint: str, source: DecodedImage, index: int) -> bytes:
        width, height = self.size(source)
        metadata = {
            "endpoint": endpoint,
            "model": None,
            "prompt": "",
            "seed": None,
            "index": index,
            "input_sha256": [source.sha256],
            "width": width,
            "height": height,
            "upscaler": self.upscaler,
        }
        digest = pattern_digest(endpoint, self.upscaler, "", None, [source.sha256], width, height)
        return render_png(digest, width, height, metadata)


def parse_upscale(request: dict[str, Any]) -> Upscale:
    factor = float_field(request, "upscaling_resize", 2.0)
    if not 0 < factor <= 8:
        raise validation_error(["upscaling_resize"], "ensure 0 < value <= 8", "value_error.number.not_in_range")
    return Upscale(
        mode=int_field(request, "resize_mode", 0, minimum=0, maximum=1),
        factor=factor,
        to_width=int_field(request, "upscaling_resize_w", 512, minimum=1, maximum=MAX_SIDE),
        to_height=int_field(request, "upscaling_resize_h", 512, minimum=1, maximum=MAX_SIDE),
        upscaler=str_field(request, "upscaler_1", "None"),
    )


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
        status, payload = app.handle_request(method, urlsplit(self.path).path, body)
        self._send(status, payload)

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

    def _send(self, status: int, payload: Payload) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting; nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("stand-in Web UI: %s %s", self.address_string(), format % args)


# --- command line -----------------------------------------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve a stand-in for the AUTOMATIC1111 Stable Diffusion Web UI API (no GPU)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port, 0 for any free one (default: %(default)s)"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models/Stable-diffusion"),
        help="folder whose *.safetensors and *.ckpt files are the checkpoints (default: %(default)s)",
    )
    parser.add_argument("--load-delay", type=float, default=0.0, help="seconds a model switch takes (default: 0)")
    parser.add_argument("--image-delay", type=float, default=0.0, help="seconds each image takes (default: 0)")
    parser.add_argument("--initial-model", default=None, help="checkpoint loaded at start (default: the first one)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Serve in the foreground until SIGTERM or SIGINT; prints `listening on http://HOST:PORT` once serving."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    webui = StandinWebUI(
        args.models_dir,
        host=args.host,
        port=args.port,
        load_delay=args.load_delay,
        image_delay=args.image_delay,
        initial_model=args.initial_model,
    )
    stop = threading.Event()
    previous = _install_stop_handlers(stop)
    try:
        try:
            webui.start()
        except OSError as error:  # address in use, not allowed, ...
            print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
            return 1
        print(f"listening on http://{args.host}:{webui.port}", flush=True)
        stop.wait()
    finally:
        webui.stop()
        _restore_handlers(previous)
    return 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _install_stop_handlers(stop: threading.Event) -> dict[int, Any]:
    """Set `stop` on SIGTERM/SIGINT; signals can only be handled from the main thread, so elsewhere do nothing."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {signum: signal.signal(signum, on_signal) for signum in _STOP_SIGNALS}


def _restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
