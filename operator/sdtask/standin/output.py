"""What a generation answers: the images (grid and AnimateDiff videos included), their infotexts and the response
body of modules/api/api.py text2imgapi / img2imgapi. Pure: no server state."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from sdtask.standin.checkpoints import CheckpointInfo
from sdtask.standin.images import pattern_digest, render_png
from sdtask.standin.requests import STANDIN_VERSION, Generation, echoed_parameters, infotext
from sdtask.standin.videos import render_video


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


def render_image(generation: Generation, checkpoint: CheckpointInfo, index: int) -> bytes:
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


def generation_response(
    generation: Generation, checkpoint: CheckpointInfo, output: Output, timestamp: str
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
