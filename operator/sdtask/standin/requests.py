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
