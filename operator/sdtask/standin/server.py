"""A stand-in for the AUTOMATIC1111 Stable Diffusion Web UI (v1.10) API, for tests and local runs without a GPU.

It answers the endpoints sdtask uses with the real server's shapes and its observable behaviour: one generation at
a time behind a queue lock, interrupts that return the images finished so far, checkpoints listed from the folders
the real one scans (`checkpoints.py`), loads that can fail (`weights.py`), the real launch flags (`cli.py`), and the
same error bodies. Images are cheap and deterministic; each carries JSON metadata (see
`images.read_standin_metadata`) naming what produced it.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sdtask.standin.auth import Response, parse_api_auth, refuse_unauthorised
from sdtask.standin.checkpoints import CheckpointInfo, CheckpointList
from sdtask.standin.errors import ApiError, Payload, invalid_image_error, validation_error, webui_error
from sdtask.standin.fields import parse_json_object
from sdtask.standin.fifolock import FIFOLock
from sdtask.standin.httpserver import HTTPServer
from sdtask.standin.images import DecodedImage, InvalidImageError, decode_image_payload
from sdtask.standin.models import CheckpointsAndOptions
from sdtask.standin.options import DEFAULT_OPTIONS, default_options
from sdtask.standin.output import assemble_output, generation_response, render_image
from sdtask.standin.progress import JobState
from sdtask.standin.requests import Generation, Upscale, parse_generation, parse_upscale
from sdtask.standin.scripts import script_info, scripts_list

logger = logging.getLogger(__name__)

# How often a running job updates its progress; interrupts are noticed at once regardless.
PROGRESS_TICK_SECONDS = 0.02
# How long stop() may wait for the serving loop to notice; short, since tests start and stop many servers.
SHUTDOWN_POLL_SECONDS = 0.02

Handler = Callable[[bytes], Payload]


class StandinWebUI(CheckpointsAndOptions):
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
        # The queue lock serialises generations, model loads and refreshes in arrival order, like the real server's;
        # the state lock guards the fields below and is never held while waiting.
        self._queue_lock = FIFOLock()
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
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._loader: threading.Thread | None = None
        self._routes = self._route_table()
        self._list_models_at_start(ckpt)

    # lifecycle

    def start(self) -> StandinWebUI:
        if self._httpd is not None:
            raise RuntimeError("the stand-in Web UI is already running")
        self._stopping.clear()
        self._interrupt.clear()
        self._httpd = HTTPServer((self.host, self._requested_port), self)
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
            refused = refuse_unauthorised(self._credentials, headers or {})
            if refused is not None:
                return refused
        try:
            return 200, handler(body), {}
        except ApiError as error:
            return error.status, error.payload, {}
        except Exception as error:  # the real server turns any exception into this body, and so do we
            logger.exception("stand-in Web UI: %s %s failed", method, path)
            return 500, webui_error(500, type(error).__name__, str(error)).payload, {}

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
        return generation_response(generation, checkpoint, output, timestamp)

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
                images.append(render_image(generation, checkpoint, len(images)))
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
                # Calls that found the queue lock taken and waited their turn (a client queueing ahead).
                "queued_calls": self._queue_lock.waited,
                "loaded_model": self._model.title if self._model else None,
                "model_on_device": self._model_on_device,
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
