"""The stand-in's command line takes the real Web UI's launch flags (modules/cmd_args.py v1.10) and runs as a user
would start it: `python -m sdtask.standin ...` and `sdtask webui-standin ...`."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sdtask.standin import StandinWebUI, write_checkpoint
from sdtask.standin.cli import API_ONLY_PORT, UI_PORT, parse_launch

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_checkpoint(tmp_path / "webui" / "models" / "Stable-diffusion" / "alpha.safetensors")
    return tmp_path / "webui"


# --- parsing ----------------------------------------------------------------------------------------------------


def test_ports_and_addresses_default_like_the_real_server() -> None:
    ui, api_only = parse_launch(["--api"]), parse_launch(["--nowebui"])
    assert (ui.port, ui.host, ui.api_only) == (UI_PORT, "127.0.0.1", False) == (7860, "127.0.0.1", False)
    assert (api_only.port, api_only.api_only) == (API_ONLY_PORT, True) == (7861, True)
    assert api_only.host == "0.0.0.0"  # uvicorn.run(host=None) listens on every interface, --listen or not
    assert parse_launch(["--listen"]).host == "0.0.0.0"
    assert parse_launch(["--listen", "--server-name", "10.1.2.3"]).host == "10.1.2.3"
    assert parse_launch(["--nowebui", "--port", "8080"]).port == 8080


def test_a_real_pods_webui_args_are_accepted_as_they_are(tmp_path: Path) -> None:
    args = [
        "--api", "--listen", "--port", "8080", "--nowebui", "--xformers", "--medvram", "--lowvram", "--no-half-vae",
        "--skip-torch-cuda-test", "--disable-safe-unpickle", "--opt-sdp-attention", "--api-log",
        "--no-download-sd-model", "--ckpt-dir", str(tmp_path / "m"), "--ckpt", str(tmp_path / "m" / "x.safetensors"),
        "--data-dir", str(tmp_path), "--api-auth", "a:b,c:d", "--precision", "full", "--lora-dir", "/l",
        "--styles-file", "a.csv", "--styles-file", "b.csv", "--timeout-keep-alive", "60", "--use-cpu", "interrogate",
        "--skip-prepare-environment", "--skip-install", "-f",
    ]  # fmt: skip
    launch = parse_launch(args)
    assert (launch.port, launch.host, launch.api, launch.api_only) == (8080, "0.0.0.0", True, True)
    assert (launch.ckpt_dir, launch.ckpt) == (tmp_path / "m", tmp_path / "m" / "x.safetensors")
    assert (launch.data_dir, launch.no_download_sd_model, launch.api_auth) == (tmp_path, True, "a:b,c:d")


@pytest.mark.parametrize("args", [["--bogus"], ["--api", "--port", "eighty"], ["--api-auth", "no-colon"]])
def test_bad_flags_stop_the_start_like_argparse_in_the_real_server(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_launch(args)
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_ignore_cmd_args_errors_lets_unknown_flags_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGNORE_CMD_ARGS_ERRORS", "1")  # shared_cmd_options.py: parse_known_args then
    assert parse_launch(["--bogus", "--nowebui"]).api_only is True


# --- the routes each mode serves ----------------------------------------------------------------------------------


def serve(webui: StandinWebUI) -> Iterator[httpx.Client]:
    with webui, httpx.Client(base_url=webui.url, timeout=10) as client:
        yield client


def test_api_only_mode_has_no_ping_but_the_api_and_memory(data_dir: Path) -> None:
    for client in serve(StandinWebUI(data_dir, api_only=True)):
        assert client.get("/internal/ping").status_code == 404
        assert client.get("/sdapi/v1/memory").status_code == 200
        assert client.get("/sdapi/v1/sd-models").status_code == 200


def test_ui_mode_has_ping_and_memory_and_without_api_flag_no_api(data_dir: Path) -> None:
    for client in serve(StandinWebUI(data_dir, api=True)):
        assert client.get("/internal/ping").json() == {}
        assert client.get("/sdapi/v1/memory").status_code == 200
    for client in serve(StandinWebUI(data_dir, api=False)):
        assert client.get("/internal/ping").json() == {}
        assert client.get("/sdapi/v1/sd-models").status_code == 404  # the UI mounts the API only with --api


def test_api_auth_guards_every_api_route_with_http_basic(data_dir: Path) -> None:
    for client in serve(StandinWebUI(data_dir, api_auth="alice:secret,bob:hunter2")):
        missing = client.get("/sdapi/v1/sd-models")
        assert (missing.status_code, missing.json()) == (401, {"detail": "Not authenticated"})
        assert missing.headers["WWW-Authenticate"] == "Basic"
        wrong = client.get("/sdapi/v1/options", auth=("alice", "hunter2"))
        assert (wrong.status_code, wrong.json()) == (401, {"detail": "Incorrect username or password"})
        # Refused before the body is looked at: a bad body is still a 401, not a 422.
        assert client.post("/sdapi/v1/txt2img", content=b"{not json").status_code == 401
        assert client.get("/sdapi/v1/memory").status_code == 401
        assert client.get("/sdapi/v1/sd-models", auth=("alice", "secret")).status_code == 200
        assert client.get("/sdapi/v1/sd-models", auth=("bob", "hunter2")).status_code == 200
        header = {"Authorization": "Basic " + base64.b64encode(b"bob:hunter2").decode()}
        assert client.post("/sdapi/v1/txt2img", json={"width": 8, "height": 8}, headers=header).status_code == 200
        assert client.get("/internal/ping").status_code == 200  # a UI route, not the API's


# --- as a user starts it ------------------------------------------------------------------------------------------


def run_until_listening(command: list[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("listening on http://127.0.0.1:"), process.stderr and process.stderr.read()
            yield process, line.removeprefix("listening on ")
        finally:
            process.kill()


@pytest.mark.parametrize(
    "launcher",
    [[sys.executable, "-m", "sdtask.standin"], [sys.executable, "-m", "sdtask.cli", "webui-standin"]],
    ids=["python -m sdtask.standin", "sdtask webui-standin"],
)
def test_command_line_serves_prints_its_url_and_exits_cleanly_on_sigterm(launcher: list[str], data_dir: Path) -> None:
    command = [*launcher, "--load-delay", "0", "--data-dir", str(data_dir), "--nowebui", "--xformers", "--port", "0"]
    for process, url in run_until_listening(command):
        options = httpx.get(url + "/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"].startswith("alpha.safetensors")
        assert httpx.get(url + "/internal/ping").status_code == 404
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stdout is not None and process.stdout.read() == ""  # exactly one line on stdout


@pytest.mark.parametrize("launcher", [["-m", "sdtask.standin"], ["-m", "sdtask.cli", "webui-standin"]])
def test_help_lists_the_real_flags_and_unknown_flags_fail(launcher: list[str]) -> None:
    shown = subprocess.run([sys.executable, *launcher, "--help"], capture_output=True, text=True, env=ENV, check=False)
    assert shown.returncode == 0
    for flag in ("--nowebui", "--listen", "--ckpt-dir", "--api-auth", "--no-download-sd-model", "--load-delay"):
        assert flag in shown.stdout
    failed = subprocess.run(
        [sys.executable, *launcher, "--no-such-flag"], capture_output=True, text=True, env=ENV, check=False
    )
    assert failed.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in failed.stderr
