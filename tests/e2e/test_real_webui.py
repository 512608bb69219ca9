"""What a platform team running the real AUTOMATIC1111 Web UI meets, against a stand-in that behaves like it
(issue: "Works against the real Stable Diffusion Web UI"). Each test failed before the pod spec and the agent
followed the real server:
- it lists checkpoints only from models/Stable-diffusion and --ckpt-dir (modules/sd_models.py);
- a checkpoint that matches but fails to load answers 200 and keeps the old model (modules/options.py);
- a --ckpt that is missing makes it fall back to another model or download one;
- /internal/ping exists only with the UI (modules/ui.py), not with --nowebui;
- every alwayson_scripts key must be a script title (modules/api/api.py, init_script_args).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from sdtask.devcluster.waiting import wait_for
from sdtask.media import detect_format
from sdtask.standin.images import read_standin_metadata

from .conftest import Cluster

GOOD = "resident.safetensors"
MOTION = "motion-base.safetensors"  # only the dynamic runtime has it: legacy bodies routed by checkpoint go there


@pytest.fixture(scope="module", autouse=True)
def dynamic_runtime(cluster: Cluster) -> Iterator[None]:
    cluster.models("switcher", GOOD, "broken.safetensors", MOTION)
    # truncated weights: listed by the Web UI (it only looks at file names), but they fail to load
    folder = cluster.system.sidecars.models_dir(cluster.namespace, "switcher")
    (folder / "broken.safetensors").write_bytes((folder / GOOD).read_bytes()[:20])
    cluster.runtime(
        "switcher",
        "pool-b",
        dynamicModel=True,
        checkpoint=GOOD,
        models={"s3Prefix": f"s3://{cluster.stack.bucket}/real-webui/models/"},
        scaling={"maxReplicas": 1},
    )
    yield


def t2i(task_id: str, runtime: str, checkpoint: str | None = None, **content: Any) -> dict[str, Any]:
    scripts = {"sd_model_checkpoint": checkpoint} if checkpoint else {}
    return {
        "metadata": {"id": task_id, "runtime": runtime, "tasktype": "text-to-image", "prefix": "real-webui"},
        "content": {
            "prompt": "a lighthouse",
            "steps": 4,
            "width": 64,
            "height": 64,
            "alwayson_scripts": scripts,
            **content,
        },
    }


def checkpoint_of(cluster: Cluster, image_uri: str) -> str:
    data, _ = cluster.s3_object(image_uri)
    metadata = read_standin_metadata(data)
    assert metadata is not None, "not an image of the stand-in"
    return str(metadata["model"])


def pod_model(cluster: Cluster, runtime: str) -> str:
    pods = cluster.get_runtime(runtime).get("status", {}).get("pods", [])
    return str(pods[0].get("model", "")) if pods else ""


def test_a_dynamic_task_whose_checkpoint_comes_from_s3_succeeds(cluster: Cluster) -> None:
    """The agent fetches it into the models volume; the Web UI sees it only because it scans --ckpt-dir there."""
    cluster.upload_model("real-webui/models/from-s3.safetensors")
    cluster.submit(t2i("from-s3", "switcher", "from-s3.safetensors"))
    status = cluster.wait_finished("from-s3")["status"]
    assert status["phase"] == "Succeeded", status
    assert checkpoint_of(cluster, status["images"][0]).startswith("from-s3.safetensors")


def test_a_corrupt_checkpoint_fails_clearly_and_the_old_model_stays_recorded(cluster: Cluster) -> None:
    cluster.submit(t2i("before-broken", "switcher", GOOD))
    assert cluster.wait_finished("before-broken")["status"]["phase"] == "Succeeded"

    cluster.submit(t2i("broken", "switcher", "broken.safetensors"), maxRetries=0)
    status = cluster.wait_finished("broken")["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ModelLoadFailed"), status
    assert "broken.safetensors" in status["message"] and GOOD in status["message"]
    assert status["images"] == [] if "images" in status else True
    wait_for(lambda: pod_model(cluster, "switcher").startswith(GOOD), 30, "the pod to still report the old model")

    cluster.submit(t2i("after-broken", "switcher"))  # no checkpoint asked: runs on what is loaded
    after = cluster.wait_finished("after-broken")["status"]
    assert checkpoint_of(cluster, after["images"][0]).startswith(GOOD)


def test_a_static_runtime_with_only_a_model_prefix_serves_its_checkpoint_from_the_first_task(cluster: Cluster) -> None:
    prefix = cluster.upload_model("real-webui/static/served.safetensors").rsplit("/", 1)[0] + "/"
    cluster.runtime("served", "pool-a", checkpoint="served.safetensors", models={"s3Prefix": prefix})
    cluster.submit(t2i("first-static", "served"))
    status = cluster.wait_finished("first-static")["status"]
    assert status["phase"] == "Succeeded", status
    assert checkpoint_of(cluster, status["images"][0]).startswith("served.safetensors")
    assert status["model"].startswith("served.safetensors")


def test_a_static_runtime_whose_checkpoint_is_missing_is_degraded_and_runs_nothing(cluster: Cluster) -> None:
    cluster.models("missing", "some-other-model.safetensors")  # a fallback the Web UI could have picked
    prefix = f"s3://{cluster.stack.bucket}/real-webui/nothing-here/"
    cluster.runtime("missing", "pool-a", checkpoint="absent.safetensors", models={"s3Prefix": prefix})
    cluster.submit(t2i("never-on-fallback", "missing"))

    def degraded() -> dict[str, Any] | None:
        conditions = cluster.get_runtime("missing").get("status", {}).get("conditions", [])
        found = next((c for c in conditions if c["type"] == "Degraded"), None)
        return found if found and found["status"] == "True" else None

    condition = wait_for(degraded, 60, "the runtime to say why its pod can't start")
    assert condition["reason"] == "ModelMissing"
    assert f"{prefix}absent.safetensors" in condition["message"]
    assert cluster.status("never-on-fallback")["phase"] == "Pending"  # waits: never generated on another model
    assert cluster.s3_keys("real-webui/never-on-fallback/") == []
    cluster.custom.delete_namespaced_custom_object("sdtask.io", "v1alpha1", cluster.namespace, "sdruntimes", "missing")


def test_a_runtime_whose_web_ui_runs_api_only_becomes_ready_and_serves_a_task(cluster: Cluster) -> None:
    cluster.models("api-only", GOOD)
    cluster.runtime("api-only", "pool-b", checkpoint=GOOD, args=["--nowebui"])

    def ready() -> bool:
        conditions = cluster.get_runtime("api-only").get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    cluster.submit(t2i("api-only-task", "api-only"))
    status = cluster.wait_finished("api-only-task")["status"]
    assert status["phase"] == "Succeeded", status
    wait_for(ready, 30, "the API-only runtime to be Ready")
    cluster.custom.delete_namespaced_custom_object("sdtask.io", "v1alpha1", cluster.namespace, "sdruntimes", "api-only")


def test_a_web_ui_started_with_api_auth_serves_tasks_with_credentials_from_a_secret(cluster: Cluster) -> None:
    cluster.core.create_namespaced_secret(
        cluster.namespace, {"metadata": {"name": "webui-auth"}, "stringData": {"api-auth": "sd:s3cret,ops:other"}}
    )
    cluster.models("guarded", GOOD)
    cluster.runtime("guarded", "pool-b", checkpoint=GOOD, apiAuth={"secretName": "webui-auth"})
    cluster.submit(t2i("guarded-task", "guarded"))
    status = cluster.wait_finished("guarded-task")["status"]
    assert status["phase"] == "Succeeded", status
    pod = next(p for p in cluster.runtime_pods("guarded") if p.status.phase == "Running")
    url = cluster.system.sidecars.webui_url(cluster.namespace, pod.metadata.name)
    with pytest.raises(urllib.error.HTTPError) as refused:  # the Web UI really requires them
        urllib.request.urlopen(f"{url}/sdapi/v1/options", timeout=5)
    assert refused.value.code == 401
    cluster.custom.delete_namespaced_custom_object("sdtask.io", "v1alpha1", cluster.namespace, "sdruntimes", "guarded")


def animatediff_legacy_body(task_id: str, formats: list[str]) -> dict[str, Any]:
    """The shape of the old API's text-to-video example (v1alpha1): routing keys, `uid` and the AnimateDiff script
    all in alwayson_scripts (kept small here: the stand-in renders every frame)."""
    return {
        "alwayson_scripts": {
            "task": "text-to-image",
            "sd_model_checkpoint": MOTION,
            "id_task": task_id,
            "uid": task_id,
            "save_dir": "real-webui/videos",
            "AnimateDiff": {
                "args": [
                    {
                        "enable": True,
                        "format": formats,
                        "fps": 8,
                        "video_length": 4,
                        "batch_size": 4,
                        "closed_loop": "N",
                    }
                ]
            },
        },
        "batch_size": 4,
        "prompt": "a cat walking",
        "steps": 4,
        "width": 64,
        "height": 64,
    }


@pytest.mark.parametrize(("formats", "extensions"), [(["GIF"], ["gif"]), (["MP4", "WEBM"], ["mp4", "webm"])])
def test_the_old_apis_animatediff_legacy_body_yields_the_video_in_its_real_format(
    cluster: Cluster, formats: list[str], extensions: list[str]
) -> None:
    from sdtask.submit import manifest_from_body

    task_id = f"video-{'-'.join(extensions)}"
    manifest = manifest_from_body(animatediff_legacy_body(task_id, formats), name=task_id, namespace=cluster.namespace)
    cluster.create(manifest)
    status = cluster.wait_finished(task_id)["status"]
    assert status["phase"] == "Succeeded", status
    assert [uri.rsplit(".", 1)[1] for uri in status["images"]] == extensions  # one video per format, not per frame
    for uri, extension in zip(status["images"], extensions, strict=True):
        data, content_type = cluster.s3_object(uri)
        assert detect_format(data).extension == extension
        assert content_type == f"{'image' if extension == 'gif' else 'video'}/{extension}"
    assert status["response"]["id_task"] == task_id  # the legacy shape
