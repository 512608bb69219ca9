"""The Web UI's settings (`shared.opts`) as far as the stand-in keeps them.

`modules/options.py` v1.10: `opts.data` starts with every option's default, GET /sdapi/v1/options returns all of
`opts.data`, and `Options.set` looks the key up in `data_labels` (`self.data_labels[key]`): a key that is no option of
this install raises KeyError, so POST /sdapi/v1/options (and `override_settings`) answer 500 for it, after the keys
before it were already set. The keys and defaults below are a subset of `modules/shared_options.py` v1.10 and of
sd-webui-animatediff's `scripts/animatediff_settings.py`, the ones a client of this project may read or set.
"""

from __future__ import annotations

from typing import Any

DEFAULT_OPTIONS: dict[str, Any] = {
    # saving images/grids
    "samples_save": True,
    "samples_format": "png",
    "samples_filename_pattern": "",
    "save_images_add_number": True,
    "grid_save": True,
    "grid_format": "png",
    "grid_extended_filename": False,
    "grid_only_if_multiple": True,
    "grid_prevent_empty_spots": False,
    "n_rows": -1,
    "enable_pnginfo": True,
    "save_txt": False,
    "jpeg_quality": 80,
    "webp_lossless": False,
    "outdir_samples": "",
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "outdir_extras_samples": "outputs/extras-images",
    "outdir_grids": "",
    "outdir_txt2img_grids": "outputs/txt2img-grids",
    "outdir_img2img_grids": "outputs/img2img-grids",
    "outdir_save": "log/images",
    # stable diffusion
    "sd_model_checkpoint": None,
    "sd_checkpoints_limit": 1,
    "sd_checkpoints_keep_in_cpu": True,
    "sd_checkpoint_cache": 0,
    "sd_unet": "Automatic",
    "enable_quantization": False,
    "emphasis": "Original",
    "enable_batch_seeds": True,
    "comma_padding_backtrack": 20,
    "CLIP_stop_at_last_layers": 1,
    "upcast_attn": False,
    "randn_source": "GPU",
    "tiling": False,
    "hires_fix_refiner_pass": "second pass",
    "sd_vae_checkpoint_cache": 0,
    "sd_vae": "Automatic",
    "sd_vae_overrides_per_model_preferences": True,
    "auto_vae_precision_bfloat16": False,
    "auto_vae_precision": True,
    "sd_vae_encode_method": "Full",
    "sd_vae_decode_method": "Full",
    "inpainting_mask_weight": 1.0,
    "initial_noise_multiplier": 1.0,
    "img2img_extra_noise": 0.0,
    "img2img_color_correction": False,
    "img2img_fix_steps": False,
    "img2img_background_color": "#ffffff",
    "disable_mmap_load_safetensors": False,
    "hide_samplers": [],
    "eta_ddim": 0.0,
    "eta_ancestral": 1.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "eta_noise_seed_delta": 0,
    "always_discard_next_to_last_sigma": False,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0,
    "upscaler_for_img2img": None,
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "code_former_weight": 0.5,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 10,
    "list_hidden_files": True,
    "return_grid": True,
    "do_not_show_images": False,
    "enable_console_prompts": False,
    # API
    "api_enable_requests": True,
    "api_forbid_local_requests": True,
    "api_useragent": "",
    # sd-webui-animatediff
    "animatediff_model_path": None,
    "animatediff_default_save_formats": ["GIF", "PNG"],
    "animatediff_save_to_custom": True,
    "animatediff_frame_extract_path": None,
    "animatediff_frame_extract_remove": False,
    "animatediff_default_frame_extract_method": "ffmpeg",
    "animatediff_optimize_gif_palette": False,
    "animatediff_optimize_gif_gifsicle": False,
    "animatediff_mp4_crf": 23,
    "animatediff_mp4_preset": "",
    "animatediff_mp4_tune": "",
    "animatediff_webp_quality": 80,
    "animatediff_webp_lossless": False,
    "animatediff_s3_enable": False,
    # set by load_model_weights
    "sd_checkpoint_hash": "",
}


def default_options() -> dict[str, Any]:
    """A fresh `opts.data`: every option at its default."""
    return {key: list(value) if isinstance(value, list) else value for key, value in DEFAULT_OPTIONS.items()}
