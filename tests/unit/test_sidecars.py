"""The simulated kubelet's reading of a pod spec (pure parts)."""

from __future__ import annotations

from pathlib import Path

from sdtask.devcluster.sidecars import expand_vars, local_webui_args, probe_url


def test_args_are_expanded_from_the_container_environment_like_the_kubelet_does() -> None:
    env = {"SDTASK_WEBUI_API_AUTH": "u:p"}
    assert expand_vars(["--api-auth", "$(SDTASK_WEBUI_API_AUTH)", "$$(X)", "$(UNSET)"], env) == [
        "--api-auth",
        "u:p",
        "$(X)",
        "$(UNSET)",
    ]


def test_only_ports_and_volume_paths_are_made_local() -> None:
    args = ["--api", "--port", "7860", "--ckpt-dir", "/models", "--ckpt", "/models/a.safetensors", "--models-x"]
    local = local_webui_args(args, "/models", Path("/tmp/m"), 4321)
    assert local == ["--api", "--port", "4321", "--ckpt-dir", "/tmp/m", "--ckpt", "/tmp/m/a.safetensors", "--models-x"]
    assert local_webui_args(["--nowebui"], "/models", Path("/tmp/m"), 5) == ["--nowebui", "--port", "5"]


def test_the_probe_goes_to_the_pod_address() -> None:
    probe = {"httpGet": {"path": "/sdapi/v1/memory", "port": 7860}}
    assert probe_url(probe, "127.0.0.2", 99) == "http://127.0.0.2:99/sdapi/v1/memory"
