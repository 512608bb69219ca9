"""Request bodies of the generation and extras endpoints, read with the real server's defaults and checks.

The defaults follow `modules/api/models.py` (the request models are built from `StableDiffusionProcessingTxt2Img`/
`Img2Img`'s signatures) and `modules/processing.py`; validation failures answer FastAPI's 422 body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdtask.standin.animatediff import Animation, parse_animatediff
from sdtask.standin.checkpoints import CheckpointInfo
from sdtask.standin.errors import invalid_image_error, validation_error, webui_error
from sdtask.standin.fields import bool_field, dict_field, float_field, int_field, str_field
from sdtask.standin.images import DecodedImage, InvalidImageError, decode_image_payload, pattern_digest, render_png
from sdtask.standin.scripts import check_scripts

MAX_IMAGES_PER_REQUEST = 64
MAX_SIDE = 16384
STANDIN_VERSION = "sdtask-standin"


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
    override_settings: dict[str, Any]
    restore_settings: bool
    send_images: bool
    save_images: bool
    animation: Animation | None
    inputs: tuple[DecodedImage, ...] = ()

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    @property
    def input_sha256(self) -> list[str]:
        return [image.sha256 for image in self.inputs]


# modules/sd_samplers*.py v1.10: every sampler's name (`all_samplers_map` holds names only, not aliases) and
# sd_schedulers.py's schedulers (label, name, aliases). samplers[0] is the default.
SAMPLERS = (
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
    "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
    "LCM",
)  # fmt: skip
SCHEDULER_NAMES = (
    ("Automatic", "automatic"), ("Uniform", "uniform"), ("Karras", "karras"), ("Exponential", "exponential"),
    ("Polyexponential", "polyexponential"), ("SGM Uniform", "sgm_uniform", "SGMUniform"), ("KL Optimal", "kl_optimal"),
    ("Align Your Steps", "align_your_steps"), ("Simple", "simple"), ("Normal", "normal"), ("DDIM", "ddim"),
    ("Beta", "beta"),
)  # fmt: skip


def resolve_sampler(sampler_name: str | None, sampler_index: str | None) -> str:
    """api.py: `get_sampler_and_scheduler(sampler_name or sampler_index, scheduler)`, then `validate_sampler_name`.

    A scheduler label at the end ("DPM++ 2M Karras") is split off; a name that is still unknown becomes the
    default sampler silently (`all_samplers_map.get(name, default_sampler)`), so validate_sampler_name's 400
    "Sampler not found" cannot happen through txt2img/img2img in v1.10.
    """
    name = sampler_name or sampler_index or SAMPLERS[0]
    for options in SCHEDULER_NAMES:
        suffix = next((option for option in options if name.endswith(" " + option)), None)
        if suffix is not None:
            name = name[: -(len(suffix) + 1)]
            break
    return name if name in SAMPLERS else SAMPLERS[0]


def derived_seed(endpoint: str, body: dict[str, Any], salt: str) -> int:
    """What seed -1 becomes: random in the real server, a hash of the request here so tests can repeat it."""
    return int.from_bytes(pattern_digest(endpoint, salt, body)[:4], "big") % 4294967294


def init_image_list(body: dict[str, Any]) -> list[Any]:
    """img2imgapi: only a missing list is "Init image not found"."""
    encoded = body.get("init_images")
    if encoded is None:
        raise webui_error(404, "HTTPException", "404: Init image not found", detail="Init image not found")
    if not isinstance(encoded, list):
        raise validation_error(["init_images"], "value is not a valid list", "type_error.list")
    if not encoded:  # an empty list gets past the API; processing then has no image to work on
        raise webui_error(500, "IndexError", "list index out of range")
    return encoded


def decode_mask(body: dict[str, Any]) -> DecodedImage | None:
    """img2imgapi decodes the mask before anything else is checked."""
    if not body.get("mask"):
        return None
    try:
        return decode_image_payload(body["mask"])
    except InvalidImageError as error:
        raise invalid_image_error("mask", error) from error


def decode_init_images(encoded: list[Any]) -> list[DecodedImage]:
    """The init images, decoded last (inside the queue in the real server)."""
    decoded = []
    for position, item in enumerate(encoded):
        try:
            decoded.append(decode_image_payload(item))
        except InvalidImageError as error:
            raise invalid_image_error(f"init_images[{position}]", error) from error
    return decoded


def parse_generation(endpoint: str, body: dict[str, Any]) -> Generation:
    """Read a txt2img/img2img body in the order api.py checks it: fields (422), the mask, scripts (422), then the
    rest; the init images are decoded last, as the real server does inside its queue."""
    batch_size = int_field(body, "batch_size", 1, minimum=1, maximum=MAX_IMAGES_PER_REQUEST)
    n_iter = int_field(body, "n_iter", 1, minimum=1, maximum=MAX_IMAGES_PER_REQUEST)
    if batch_size * n_iter > MAX_IMAGES_PER_REQUEST:
        raise validation_error(["n_iter"], f"batch_size * n_iter must be <= {MAX_IMAGES_PER_REQUEST}", "value_error")
    seed = int_field(body, "seed", -1)
    subseed = int_field(body, "subseed", -1)
    is_img2img = endpoint == "img2img"
    sampler_name = resolve_sampler(
        str_field(body, "sampler_name", "") or None, str_field(body, "sampler_index", "Euler")
    )
    scripts = dict_field(body, "alwayson_scripts")
    encoded = init_image_list(body) if is_img2img else []
    mask = decode_mask(body) if is_img2img else None
    check_scripts(endpoint, body)
    animation = parse_animatediff(scripts)
    if animation is not None:
        batch_size = animation.batch_size  # AnimateDiffProcess.set_p replaces p.batch_size
        if batch_size * n_iter > MAX_IMAGES_PER_REQUEST:
            raise validation_error(["n_iter"], f"frames * n_iter must be <= {MAX_IMAGES_PER_REQUEST}", "value_error")
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
        sampler_name=sampler_name,
        batch_size=batch_size,
        n_iter=n_iter,
        denoising_strength=float_field(body, "denoising_strength", 0.75) if is_img2img else None,
        restore_faces=bool_field(body, "restore_faces", False),
        override_settings=dict_field(body, "override_settings"),
        restore_settings=bool_field(body, "override_settings_restore_afterwards", True),
        send_images=bool_field(body, "send_images", True),
        save_images=bool_field(body, "save_images", False),
        animation=animation,
        # The inputs' digests: init images in order, then the mask.
        inputs=(*decode_init_images(encoded), *([mask] if mask is not None else [])),
    )


def echoed_parameters(generation: Generation) -> dict[str, Any]:
    """The request as received; img2img drops its images unless `include_init_images`, as the real one does."""
    parameters = dict(generation.body)
    if generation.endpoint == "img2img" and not bool_field(parameters, "include_init_images", False):
        parameters["init_images"] = None
        parameters["mask"] = None
    return parameters


def infotext(generation: Generation, checkpoint: CheckpointInfo, seed: int) -> str:
    """The "parameters" text the real server writes into PNGs and returns in `info.infotexts`."""
    settings = {
        "Steps": generation.steps,
        "Sampler": generation.sampler_name,
        "CFG scale": generation.cfg_scale,
        "Seed": seed,
        "Size": f"{generation.width}x{generation.height}",
        "Model hash": checkpoint.shorthash,
        "Model": checkpoint.name_for_extra,
        "Denoising strength": generation.denoising_strength,
        "Version": STANDIN_VERSION,
    }
    line = ", ".join(f"{key}: {value}" for key, value in settings.items() if value is not None)
    negative = f"\nNegative prompt: {generation.negative_prompt}" if generation.negative_prompt else ""
    return f"{generation.prompt}{negative}\n{line}".strip()


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
    # models.py ExtrasBaseRequest: upscaling_resize ge=1, le=8 (pydantic v1's messages and types).
    factor = float_field(request, "upscaling_resize", 2.0)
    if factor < 1:
        raise validation_error(
            ["upscaling_resize"], "ensure this value is greater than or equal to 1", "value_error.number.not_ge"
        )
    if factor > 8:
        raise validation_error(
            ["upscaling_resize"], "ensure this value is less than or equal to 8", "value_error.number.not_le"
        )
    return Upscale(
        mode=int_field(request, "resize_mode", 0, minimum=0, maximum=1),
        factor=factor,
        to_width=int_field(request, "upscaling_resize_w", 512, minimum=1, maximum=MAX_SIDE),
        to_height=int_field(request, "upscaling_resize_h", 512, minimum=1, maximum=MAX_SIDE),
        upscaler=str_field(request, "upscaler_1", "None"),
    )
