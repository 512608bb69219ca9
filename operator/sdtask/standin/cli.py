"""The stand-in's command line: the real Web UI's launch flags, so a runtime pod's Web UI args can be given as they are.

`python -m sdtask.standin [--load-delay S] [--image-delay S] [--verbose] <the Web UI's own args>`

The flags follow AUTOMATIC1111 v1.10 `modules/cmd_args.py` (parsed in `modules/shared_cmd_options.py` with
`parser.parse_args()`, so an unknown flag stops the program with argparse's usage error, exit status 2, unless the
environment has `IGNORE_CMD_ARGS_ERRORS`), plus the flags the built-in extensions add from their `preload.py`
(`extensions-builtin/Lora`: `--lora-dir`, `--lyco-dir-backcompat`; LDSR, ScuNET, SwinIR: their `--*-models-path`).
Flags that only tune torch or the Gradio UI are accepted and ignored. The stand-in's own knobs are extra flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sdtask.standin.auth import parse_api_auth
from sdtask.standin.server import StandinWebUI

# Ports of webui.py v1.10: the Gradio UI's default (`demo.launch(server_port=cmd_opts.port)`, Gradio's 7860) and the
# API-only default (`api_only()`: `port=cmd_opts.port if cmd_opts.port else 7861`).
UI_PORT = 7860
API_ONLY_PORT = 7861

# cmd_args.py v1.10 flags that take no value and change nothing the stand-in imitates.
IGNORED_SWITCHES = (
    "--update-all-extensions",
    "--skip-python-version-check",
    "--skip-torch-cuda-test",
    "--reinstall-xformers",
    "--reinstall-torch",
    "--update-check",
    "--test-server",
    "--log-startup",
    "--skip-prepare-environment",
    "--skip-install",
    "--dump-sysinfo",
    "--do-not-download-clip",
    "--no-half",
    "--no-half-vae",
    "--no-progressbar-hiding",
    "--allow-code",
    "--medvram",
    "--medvram-sdxl",
    "--lowvram",
    "--lowram",
    "--always-batch-cond-uncond",
    "--unload-gfpgan",
    "--upcast-sampling",
    "--share",
    "--enable-insecure-extension-access",
    "--xformers",
    "--force-enable-xformers",
    "--xformers-flash-attention",
    "--deepdanbooru",
    "--opt-split-attention",
    "--opt-sub-quad-attention",
    "--opt-split-attention-invokeai",
    "--opt-split-attention-v1",
    "--opt-sdp-attention",
    "--opt-sdp-no-mem-attention",
    "--disable-opt-split-attention",
    "--disable-nan-check",
    "--use-ipex",
    "--disable-model-loading-ram-optimization",
    "--show-negative-prompt",
    "--hide-ui-dir-config",
    "--freeze-settings",
    "--gradio-debug",
    "--opt-channelslast",
    "--autolaunch",
    "--use-textbox-seed",
    "--disable-console-progressbars",
    "--enable-console-prompts",
    "--disable-safe-unpickle",
    "--api-log",
    "--ui-debug-mode",
    "--administrator",
    "--disable-tls-verify",
    "--gradio-queue",
    "--no-gradio-queue",
    "--skip-version-check",
    "--add-stop-route",
    "--api-server-stop",
    "--disable-all-extensions",
    "--disable-extra-extensions",
    "--unix-filenames-sanitization",
    "--no-prompt-history",
    "-f",  # lets webui.sh run as root; parsed and unused by the Python side
)

# cmd_args.py v1.10 (and built-in extensions' preload.py) flags that take one value the stand-in does not use.
IGNORED_VALUES: tuple[tuple[str, Any], ...] = (
    ("--loglevel", str),
    ("--config", str),
    ("--vae-dir", str),
    ("--gfpgan-dir", str),
    ("--gfpgan-model", str),
    ("--max-batch-count", int),
    ("--embeddings-dir", str),
    ("--textual-inversion-templates-dir", str),
    ("--hypernetwork-dir", str),
    ("--localizations-dir", str),
    ("--ngrok", str),
    ("--ngrok-region", str),
    ("--ngrok-options", json.loads),
    ("--codeformer-models-path", str),
    ("--gfpgan-models-path", str),
    ("--esrgan-models-path", str),
    ("--bsrgan-models-path", str),
    ("--realesrgan-models-path", str),
    ("--dat-models-path", str),
    ("--clip-models-path", str),
    ("--sub-quad-q-chunk-size", int),
    ("--sub-quad-kv-chunk-size", int),
    ("--sub-quad-chunk-threshold", int),
    ("--ui-config-file", str),
    ("--freeze-settings-in-sections", str),
    ("--freeze-specific-settings", str),
    ("--ui-settings-file", str),
    ("--gradio-auth", str),
    ("--gradio-auth-path", str),
    ("--gradio-img2img-tool", str),
    ("--gradio-inpaint-tool", str),
    ("--gradio-allowed-path", str),
    ("--styles-file", str),
    ("--theme", str),
    ("--vae-path", str),
    ("--device-id", str),
    ("--cors-allow-origins", str),
    ("--cors-allow-origins-regex", str),
    ("--tls-keyfile", str),
    ("--tls-certfile", str),
    ("--subpath", str),
    ("--timeout-keep-alive", int),
    ("--filenames-max-length", int),
    # extensions-builtin/*/preload.py
    ("--lora-dir", str),
    ("--lyco-dir-backcompat", str),
    ("--ldsr-models-path", str),
    ("--scunet-models-path", str),
    ("--swinir-models-path", str),
)
# Flags that may be given more than once (action="append" in cmd_args.py).
APPENDED = frozenset({"--gradio-allowed-path", "--styles-file"})


@dataclass(frozen=True)
class Launch:
    """What the parsed command line asks the stand-in for."""

    host: str
    port: int
    api: bool
    api_only: bool
    data_dir: Path
    models_dir: Path | None
    ckpt_dir: Path | None
    ckpt: Path | None
    no_download_sd_model: bool
    no_hashing: bool
    skip_load_model_at_start: bool
    api_auth: str | None
    load_delay: float
    image_delay: float
    verbose: bool


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a stand-in for the AUTOMATIC1111 Stable Diffusion Web UI (v1.10) API, without a GPU. "
        "Takes the real Web UI's launch flags.",
    )
    real = parser.add_argument_group("the real Web UI's flags that the stand-in follows (modules/cmd_args.py)")
    real.add_argument("--api", action="store_true", help="serve the /sdapi/v1 API next to the UI")
    real.add_argument("--nowebui", action="store_true", help=f"API only: no UI routes; default port {API_ONLY_PORT}")
    real.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (default: 127.0.0.1)")
    real.add_argument("--server-name", default=None, help="address to listen on; overrides --listen")
    real.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port (default: {UI_PORT}, or {API_ONLY_PORT} with --nowebui); 0 picks a free one (stand-in only)",
    )
    real.add_argument("--data-dir", type=Path, default=Path.cwd(), help="base folder; models in <data-dir>/models")
    real.add_argument("--models-dir", type=Path, default=None, help="models folder; overrides <data-dir>/models")
    real.add_argument("--ckpt-dir", type=Path, default=None, help="another folder scanned for checkpoints")
    real.add_argument("--ckpt", type=Path, default=None, help="checkpoint to list and load at start")
    real.add_argument("--no-download-sd-model", action="store_true", help="never try to download SD 1.5")
    real.add_argument("--no-hashing", action="store_true", help="never compute checkpoints' sha256")
    real.add_argument("--skip-load-model-at-start", action="store_true", help="load no model until a request needs one")
    real.add_argument("--api-auth", default=None, help='HTTP Basic credentials "user:pass[,user2:pass2]" for the API')
    real.add_argument("--precision", choices=["full", "half", "autocast"], default="autocast", help=argparse.SUPPRESS)
    real.add_argument("--use-cpu", nargs="+", default=[], type=str.lower, help=argparse.SUPPRESS)
    for flag in IGNORED_SWITCHES:
        real.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag, kind in IGNORED_VALUES:
        real.add_argument(flag, type=kind, action="append" if flag in APPENDED else "store", help=argparse.SUPPRESS)

    own = parser.add_argument_group("the stand-in's own flags")
    own.add_argument("--load-delay", type=float, default=0.0, help="seconds a model load takes (default: 0)")
    own.add_argument("--image-delay", type=float, default=0.0, help="seconds each image takes (default: 0)")
    own.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def parse_launch(argv: Sequence[str] | None = None, *, prog: str | None = None) -> Launch:
    """Parse like shared_cmd_options.py: unknown flags are an error unless IGNORE_CMD_ARGS_ERRORS is set."""
    parser = build_parser(prog)
    if os.environ.get("IGNORE_CMD_ARGS_ERRORS") is None:
        args = parser.parse_args(argv)
    else:
        args, _ = parser.parse_known_args(argv)
    if args.api_auth:
        try:
            parse_api_auth(args.api_auth)
        except ValueError as error:  # the real api.py fails at start on a malformed pair, too
            parser.error(f"argument --api-auth: {error}")
    # initialize_util.gradio_server_name(): --server-name, else 0.0.0.0 with --listen, else None. The UI hands None
    # to Gradio, which listens on 127.0.0.1; API-only (webui.py api_only) hands it to uvicorn.run(host=None), whose
    # asyncio create_server(host=None) listens on every interface: there --listen changes nothing in v1.10.
    host = args.server_name or ("0.0.0.0" if args.listen or args.nowebui else "127.0.0.1")
    port = args.port if args.port is not None else (API_ONLY_PORT if args.nowebui else UI_PORT)
    return Launch(
        host=host,
        port=port,
        api=args.api,
        api_only=args.nowebui,
        data_dir=args.data_dir,
        models_dir=args.models_dir,
        ckpt_dir=args.ckpt_dir,
        ckpt=args.ckpt,
        no_download_sd_model=args.no_download_sd_model,
        no_hashing=args.no_hashing,
        skip_load_model_at_start=args.skip_load_model_at_start,
        api_auth=args.api_auth,
        load_delay=args.load_delay,
        image_delay=args.image_delay,
        verbose=args.verbose,
    )


def webui_for(launch: Launch) -> StandinWebUI:
    return StandinWebUI(
        launch.data_dir,
        models_dir=launch.models_dir,
        ckpt_dir=launch.ckpt_dir,
        ckpt=launch.ckpt,
        host=launch.host,
        port=launch.port,
        api=launch.api,
        api_only=launch.api_only,
        api_auth=launch.api_auth,
        no_download_sd_model=launch.no_download_sd_model,
        no_hashing=launch.no_hashing,
        load_at_start=not launch.skip_load_model_at_start,
        load_delay=launch.load_delay,
        image_delay=launch.image_delay,
    )


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Serve in the foreground until SIGTERM or SIGINT; prints `listening on http://HOST:PORT` once serving."""
    launch = parse_launch(argv, prog=prog)
    logging.basicConfig(
        level=logging.DEBUG if launch.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    webui = webui_for(launch)
    stop = threading.Event()
    previous = _install_stop_handlers(stop)
    try:
        try:
            webui.start()
        except OSError as error:  # address in use, not allowed, ...
            print(f"error: cannot listen on {launch.host}:{launch.port}: {error}", file=sys.stderr)
            return 1
        print(f"listening on {webui.url}", flush=True)
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
