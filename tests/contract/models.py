"""The real Web UI API's request and response models, re-expressed in our own pydantic models.

Field names and types follow AUTOMATIC1111 v1.10 `modules/api/models.py`: the txt2img/img2img request models are
generated there from the `__init__` parameters of `StableDiffusionProcessingTxt2Img`/`Img2Img` (`modules/processing.py`)
minus `API_NOT_ALLOWED`, plus the API's own fields (`sampler_index`, `script_name`, `script_args`, `send_images`,
`save_images`, `alwayson_scripts`, `infotext`, and for img2img `init_images`, `mask`, `include_init_images`); the
responses are `TextToImageResponse`/`ImageToImageResponse` (`images: list[str]`, `parameters: dict`, `info: str`),
`ExtrasSingleImageResponse` (`image`, `html_info`), `ExtrasBatchImagesResponse`, `SDModelItem`, `ProgressResponse`,
`MemoryResponse`, `ScriptsList`, `ScriptInfo`; the error bodies are `api.py`'s `handle_exception`
(`error`, `detail`, `body`, `errors`) and FastAPI's 422 `{"detail": [...]}`.

They are stricter than the real (pydantic v1, coercing) ones on purpose: types are strict, and unknown request keys are
refused, because the real server silently ignores a key its model does not have (a typo there is a bug the real
server never reports). Drift in either the stand-in's answers or the agent's requests then fails a test.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter

Number = StrictInt | StrictFloat


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _ProcessingFields(_Request):
    """StableDiffusionProcessing.__init__ (v1.10 dataclass fields the API keeps), every one optional."""

    prompt: StrictStr | None = ""
    negative_prompt: StrictStr | None = None
    styles: list[StrictStr] | None = None
    seed: StrictInt | None = -1
    subseed: StrictInt | None = -1
    subseed_strength: Number | None = 0
    seed_resize_from_h: StrictInt | None = -1
    seed_resize_from_w: StrictInt | None = -1
    sampler_name: StrictStr | None = None
    scheduler: StrictStr | None = None
    batch_size: StrictInt | None = 1
    n_iter: StrictInt | None = 1
    steps: StrictInt | None = 50
    cfg_scale: Number | None = 7.0
    width: StrictInt | None = 512
    height: StrictInt | None = 512
    restore_faces: StrictBool | None = None
    tiling: StrictBool | None = None
    do_not_save_samples: StrictBool | None = False
    do_not_save_grid: StrictBool | None = False
    eta: Number | None = None
    denoising_strength: Number | None = None
    s_min_uncond: Number | None = None
    s_churn: Number | None = None
    s_tmax: Number | None = None
    s_tmin: Number | None = None
    s_noise: Number | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: StrictBool | None = True
    refiner_checkpoint: StrictStr | None = None
    refiner_switch_at: Number | None = None
    disable_extra_networks: StrictBool | None = False
    comments: dict[str, Any] | None = None
    force_task_id: StrictStr | None = None
    # models.py's additional fields
    sampler_index: StrictStr | None = "Euler"
    script_name: StrictStr | None = None
    script_args: list[Any] | None = []
    send_images: StrictBool | None = True
    save_images: StrictBool | None = False
    alwayson_scripts: dict[str, Any] | None = {}
    infotext: StrictStr | None = None


class Txt2ImgRequest(_ProcessingFields):
    """StableDiffusionTxt2ImgProcessingAPI."""

    enable_hr: StrictBool | None = False
    firstphase_width: StrictInt | None = 0
    firstphase_height: StrictInt | None = 0
    hr_scale: Number | None = 2.0
    hr_upscaler: StrictStr | None = None
    hr_second_pass_steps: StrictInt | None = 0
    hr_resize_x: StrictInt | None = 0
    hr_resize_y: StrictInt | None = 0
    hr_checkpoint_name: StrictStr | None = None
    hr_sampler_name: StrictStr | None = None
    hr_scheduler: StrictStr | None = None
    hr_prompt: StrictStr | None = ""
    hr_negative_prompt: StrictStr | None = ""
    denoising_strength: Number | None = 0.75


class Img2ImgRequest(_ProcessingFields):
    """StableDiffusionImg2ImgProcessingAPI: `init_images` are base64 strings (or data URLs, or http(s) links)."""

    init_images: list[StrictStr] | None = None
    resize_mode: StrictInt | None = 0
    denoising_strength: Number | None = 0.75
    image_cfg_scale: Number | None = None
    mask: StrictStr | None = None
    mask_blur_x: StrictInt | None = 4
    mask_blur_y: StrictInt | None = 4
    mask_blur: StrictInt | None = None
    mask_round: StrictBool | None = True
    inpainting_fill: StrictInt | None = 0
    inpaint_full_res: StrictBool | None = True
    inpaint_full_res_padding: StrictInt | None = 0
    inpainting_mask_invert: StrictInt | None = 0
    initial_noise_multiplier: Number | None = None
    include_init_images: StrictBool | None = False


class ExtrasBaseRequest(_Request):
    resize_mode: Literal[0, 1] = 0
    show_extras_results: StrictBool = True
    gfpgan_visibility: Number = Field(default=0, ge=0, le=1)
    codeformer_visibility: Number = Field(default=0, ge=0, le=1)
    codeformer_weight: Number = Field(default=0, ge=0, le=1)
    upscaling_resize: Number = Field(default=2, ge=1, le=8)
    upscaling_resize_w: StrictInt = Field(default=512, ge=1)
    upscaling_resize_h: StrictInt = Field(default=512, ge=1)
    upscaling_crop: StrictBool = True
    upscaler_1: StrictStr = "None"
    upscaler_2: StrictStr = "None"
    extras_upscaler_2_visibility: Number = Field(default=0, ge=0, le=1)
    upscale_first: StrictBool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: StrictStr = ""


class FileData(_Request):
    data: StrictStr
    name: StrictStr


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData]


class OptionsRequest(_Request):
    """POST /sdapi/v1/options takes `dict[str, Any]`; the checkpoint, when given, is a name."""

    model_config = ConfigDict(extra="allow", strict=True)
    sd_model_checkpoint: StrictStr | None = None


class GenerationResponse(_Response):
    """TextToImageResponse / ImageToImageResponse. `info` is a JSON string (processed.js()), never an object."""

    images: list[StrictStr] | None
    parameters: dict[str, Any]
    info: StrictStr


class GenerationInfo(BaseModel):
    """The fields of `info` (Processed.js()) that clients of this project read."""

    model_config = ConfigDict(extra="allow", strict=True)
    seed: StrictInt
    all_seeds: list[StrictInt]
    subseed: StrictInt
    all_subseeds: list[StrictInt]
    prompt: StrictStr
    all_prompts: list[StrictStr]
    index_of_first_image: StrictInt
    infotexts: list[StrictStr]
    sd_model_name: StrictStr | None
    sd_model_hash: StrictStr | None
    job_timestamp: StrictStr
    width: StrictInt
    height: StrictInt
    sampler_name: StrictStr
    batch_size: StrictInt


class ExtrasSingleImageResponse(_Response):
    html_info: StrictStr
    image: StrictStr | None


class ExtrasBatchImagesResponse(_Response):
    html_info: StrictStr
    images: list[StrictStr]


class SDModelItem(_Response):
    title: StrictStr
    model_name: StrictStr
    hash: StrictStr | None
    sha256: StrictStr | None
    filename: StrictStr
    config: StrictStr | None


class ProgressResponse(_Response):
    progress: Number
    eta_relative: Number
    state: dict[str, Any]
    current_image: StrictStr | None = None
    textinfo: StrictStr | None = None
    current_task: StrictStr | None = None


class MemoryResponse(_Response):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ScriptsList(_Response):
    txt2img: list[StrictStr] | None
    img2img: list[StrictStr] | None


class ScriptArg(_Response):
    label: StrictStr | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[StrictStr] | None = None


class ScriptInfo(_Response):
    name: StrictStr | None
    is_alwayson: StrictBool | None
    is_img2img: StrictBool | None
    args: list[ScriptArg]


class HandlerError(_Response):
    """api.py handle_exception's body, for exceptions and HTTPExceptions raised by handlers."""

    error: StrictStr
    detail: Any
    body: Any
    errors: StrictStr


class ValidationErrorItem(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    loc: list[StrictStr | StrictInt]
    msg: StrictStr
    type: StrictStr


class ValidationError(_Response):
    detail: list[ValidationErrorItem]


class SimpleDetail(_Response):
    """Starlette/FastAPI's own answers: 404/405 routing, 401 from HTTPBasic."""

    detail: StrictStr


_EMPTY = TypeAdapter(dict[str, Any])
_NULL = TypeAdapter(None)

# (method, path) -> the 200 answer's model; a TypeAdapter for the bare ones.
RESPONSES: dict[tuple[str, str], Any] = {
    ("POST", "/sdapi/v1/txt2img"): GenerationResponse,
    ("POST", "/sdapi/v1/img2img"): GenerationResponse,
    ("POST", "/sdapi/v1/extra-single-image"): ExtrasSingleImageResponse,
    ("POST", "/sdapi/v1/extra-batch-images"): ExtrasBatchImagesResponse,
    ("GET", "/sdapi/v1/progress"): ProgressResponse,
    ("POST", "/sdapi/v1/interrupt"): _EMPTY,
    ("GET", "/sdapi/v1/options"): _EMPTY,
    ("POST", "/sdapi/v1/options"): _NULL,
    ("GET", "/sdapi/v1/sd-models"): TypeAdapter(list[SDModelItem]),
    ("POST", "/sdapi/v1/refresh-checkpoints"): _NULL,
    ("POST", "/sdapi/v1/unload-checkpoint"): _EMPTY,
    ("POST", "/sdapi/v1/reload-checkpoint"): _EMPTY,
    ("GET", "/sdapi/v1/memory"): MemoryResponse,
    ("GET", "/sdapi/v1/scripts"): ScriptsList,
    ("GET", "/sdapi/v1/script-info"): TypeAdapter(list[ScriptInfo]),
    ("GET", "/internal/ping"): _EMPTY,
}

REQUESTS: dict[str, type[BaseModel]] = {
    "/sdapi/v1/txt2img": Txt2ImgRequest,
    "/sdapi/v1/img2img": Img2ImgRequest,
    "/sdapi/v1/extra-single-image": ExtrasSingleImageRequest,
    "/sdapi/v1/extra-batch-images": ExtrasBatchImagesRequest,
    "/sdapi/v1/options": OptionsRequest,
}


def _validate(model: Any, value: Any) -> None:
    if isinstance(model, TypeAdapter):
        model.validate_python(value, strict=True)
    else:
        model.model_validate(value, strict=True)


def check_response(method: str, path: str, status: int, content: bytes) -> None:
    """Raise (pydantic.ValidationError, AssertionError) unless the answer fits the real API's model for it."""
    if path.startswith("/standin/"):
        return  # the stand-in's own routes
    body = json.loads(content)
    if status == 200:
        model = RESPONSES.get((method, path))
        assert model is not None, f"no contract for {method} {path}"
        _validate(model, body)
        if model is GenerationResponse:
            GenerationInfo.model_validate(json.loads(body["info"]), strict=True)
    elif status == 422 and isinstance(body.get("detail"), list):
        ValidationError.model_validate(body, strict=True)
    elif set(body) == {"detail"}:
        SimpleDetail.model_validate(body, strict=True)
    else:
        HandlerError.model_validate(body, strict=True)


def check_request(path: str, payload: Any) -> BaseModel:
    """Validate a request body the agent sends against the real API's request model for `path`."""
    return REQUESTS[path].model_validate(payload, strict=True)
