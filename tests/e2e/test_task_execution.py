"""`kubectl apply -f task.yaml` ends with images in S3, status.output_location set, and the callback delivered.

Everything is real but the GPU: the operator, kwok GPU pods whose agent runs as a local process, the stand-in Web UI
(which derives its images from its input, so tests can see what the agent sent), a moto S3 server, local HTTP servers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes.client import CoordinationV1Api
from kubernetes.client.exceptions import ApiException

from sdtask.api import GROUP, VERSION
from sdtask.devcluster.waiting import wait_for
from sdtask.standin.images import read_standin_metadata
from tests.standin_support import metadata

from .conftest import CallbackReceiver, Cluster, Files, sample_png

STATIC_MODEL = "v1-5-pruned-emaonly.safetensors"


@pytest.fixture(scope="module", autouse=True)
def runtimes(cluster: Cluster) -> Iterator[None]:
    cluster.models("sdruntime", STATIC_MODEL, "other.safetensors")
    cluster.runtime("sdruntime", "pool-a", checkpoint=STATIC_MODEL, scaling={"maxReplicas": 1})
    cluster.models("dynamic", "anything-v5.safetensors", "dreamshaper.safetensors")
    cluster.runtime("dynamic", "pool-b", dynamicModel=True, scaling={"maxReplicas": 1})
    yield


def seed_task(task_id: str, init_image: str, **content: Any) -> dict[str, Any]:
    """The image-to-image request of ARCHITECTURE.md, as clients of the old API send it."""
    return {
        "metadata": {
            "id": task_id,
            "runtime": "sdruntime",
            "tasktype": "image-to-image",
            "prefix": "output",
            "context": "",
        },
        "content": {
            "alwayson_scripts": {},
            "prompt": "cat wizard, gandalf, lord of the rings, detailed, fantasy, cute, adorable, Pixar, Disney",
            "steps": 16,
            "width": 512,
            "height": 512,
            "init_images": [init_image],
            **content,
        },
    }


def text_task(task_id: str, runtime: str = "sdruntime", **content: Any) -> dict[str, Any]:
    return {
        "metadata": {"id": task_id, "runtime": runtime, "tasktype": "text-to-image", "prefix": "t2i"},
        "content": {"prompt": "a lighthouse at dusk", "steps": 8, "width": 64, "height": 64, **content},
    }


def loaded_model(cluster: Cluster, runtime: str) -> str:
    pod = next(p for p in cluster.runtime_pods(runtime) if p.status.phase == "Running")
    url = cluster.system.sidecars.webui_url(cluster.namespace, pod.metadata.name)
    with urllib.request.urlopen(f"{url}/standin/stats") as response:
        stats: dict[str, Any] = json.load(response)
    return f"{stats['loaded_model']}|loads={stats['model_loads']}|interrupts={stats['interrupts']}"


def interrupts(cluster: Cluster) -> int:
    """How many times the runtime's Web UI has been interrupted so far."""
    return int(loaded_model(cluster, "sdruntime").rsplit("interrupts=", 1)[1])


def wait_interrupted(cluster: Cluster, before: int) -> None:
    wait_for(lambda: interrupts(cluster) == before + 1, 30, "the Web UI to be interrupted")


def test_seed_image_to_image_task_succeeds_end_to_end(
    cluster: Cluster, files: Files, callbacks: CallbackReceiver
) -> None:
    cat = sample_png(seed=1)
    url = files.publish("/cat.png", cat)
    task = seed_task("test-i2i", url)
    task["metadata"]["context"] = {"ticket": 42, "user": "ana"}
    cluster.submit(task, callback={"url": callbacks.url})

    done = cluster.wait_finished("test-i2i")

    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["output_location"] == f"s3://{cluster.stack.bucket}/output/test-i2i"
    assert status["response"] == {
        "id": "test-i2i",
        "runtime": "sdruntime",
        "output_location": status["output_location"],
    }
    assert status["images"] == [f"s3://{cluster.stack.bucket}/output/test-i2i/image-1.png"]
    image, content_type = cluster.s3_object(status["images"][0])
    assert content_type == "image/png"
    generated = read_standin_metadata(image)
    assert generated is not None
    # The Web UI got the bytes of the downloaded init image, not the link.
    assert generated["input_sha256"] == [hashlib.sha256(cat).hexdigest()]
    assert generated["endpoint"] == "img2img"
    record, _ = cluster.s3_object(status["output_url"])
    assert json.loads(record)["seeds"]
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in status["conditions"])

    delivered = wait_for(lambda: callbacks.for_id("test-i2i"), 30, "the callback")
    body = delivered[0]["body"]
    assert body == {
        "id": "test-i2i",
        "runtime": "sdruntime",
        "result": True,
        "output_location": status["output_location"],
        "image_url": status["images"],
        "output_url": status["output_url"],
        "context": {"ticket": 42, "user": "ana"},
        "error": "",
    }
    callback_state = wait_for(
        lambda: (
            (cluster.status("test-i2i").get("callback") or {}).get("state") == "Delivered" and cluster.task("test-i2i")
        ),
        30,
        "callback state",
    )
    assert callback_state["status"]["phase"] == "Succeeded"


def test_describe_tells_the_story_of_a_task(cluster: Cluster, files: Files) -> None:
    cluster.submit(seed_task("story", files.publish("/story.png", sample_png(seed=2))))
    cluster.wait_finished("story")
    reasons = [reason for _, reason, _ in cluster.wait_for_event("story", "Normal", "Completed")]
    # Events are for outcomes and problems (an Event per step would double the API requests of a task); the
    # conditions tell each step, with its reason and time.
    assert "Completed" in reasons and not {"Queued", "Scheduled"} & set(reasons)
    conditions = {c["type"]: c for c in cluster.status("story")["conditions"]}
    assert conditions["Scheduled"]["status"] == "True" and conditions["Scheduled"]["reason"] == "Assigned"
    assert conditions["Running"]["status"] == "False" and conditions["Succeeded"]["reason"] == "Completed"
    assert "assigned to pod" in conditions["Scheduled"]["message"]


def test_text_to_image_batch_of_four_yields_four_numbered_images(cluster: Cluster) -> None:
    cluster.submit(text_task("batch-four", batch_size=4, seed=1234))
    status = cluster.wait_finished("batch-four")["status"]
    assert status["phase"] == "Succeeded", status
    keys = cluster.s3_keys("t2i/batch-four/")
    assert keys == sorted([f"t2i/batch-four/image-{i}.png" for i in range(1, 5)] + ["t2i/batch-four/batch-four.out"])
    seeds = [metadata(cluster.s3_object(uri)[0])["seed"] for uri in status["images"]]
    assert seeds == [1234, 1235, 1236, 1237]


def test_a_second_task_with_the_same_id_is_refused_and_the_first_results_stay(cluster: Cluster) -> None:
    """Outputs live at <prefix>/<id> (the old API's layout): a second SDTask naming the same prefix and id while the
    first exists would overwrite its results. It is refused, with the owner named, and nothing of the first changes.
    (A retry of one task, same uid, overwrites its own keys: test_resilience's agent-crash test.)"""
    cluster.submit(text_task("twice", batch_size=2, seed=7), name="twice-1")
    assert cluster.wait_finished("twice-1")["status"]["phase"] == "Succeeded"
    keys = ["t2i/twice/image-1.png", "t2i/twice/image-2.png", "t2i/twice/twice.out"]
    assert cluster.s3_keys("t2i/twice/") == keys
    before = [cluster.s3_object(f"s3://{cluster.stack.bucket}/{key}")[0] for key in keys]

    cluster.submit(text_task("twice", batch_size=2, seed=8), name="twice-2")
    status = cluster.wait_finished("twice-2")["status"]
    assert (status["phase"], status["reason"], status["attempts"]) == ("Failed", "OutputClaimed", 1)
    assert f"s3://{cluster.stack.bucket}/t2i/twice" in status["message"]
    assert f"{cluster.namespace}/twice-1" in status["message"]
    cluster.wait_for_event("twice-2", "Warning", "OutputClaimed")
    assert cluster.s3_keys("t2i/twice/") == keys
    assert [cluster.s3_object(f"s3://{cluster.stack.bucket}/{key}")[0] for key in keys] == before


def delete_task(cluster: Cluster, name: str) -> None:
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "sdtasks", name)
    wait_for(lambda: name not in cluster.task_names(), 30, f"task {name} deleted")


def test_a_task_re_created_after_deletion_takes_its_id_back(cluster: Cluster) -> None:
    """kubectl delete, then kubectl apply of the same task (as GitOps does): it runs again and its results replace
    the old ones, one copy of each."""
    cluster.submit(text_task("again", batch_size=2, seed=7))
    first = cluster.wait_finished("again")["status"]
    old_image = cluster.s3_object(first["images"][0])[0]
    delete_task(cluster, "again")
    cluster.submit(text_task("again", batch_size=2, seed=9))
    second = cluster.wait_finished("again")["status"]
    assert second["phase"] == "Succeeded", second
    assert second["images"] == first["images"]
    assert cluster.s3_keys("t2i/again/") == ["t2i/again/again.out", "t2i/again/image-1.png", "t2i/again/image-2.png"]
    assert cluster.s3_object(second["images"][0])[0] != old_image  # the new run's (seed 9), not the old one's


def test_a_failed_re_run_never_replaces_the_earlier_success_record(cluster: Cluster) -> None:
    """Re-created after deletion (while the first exists, a second task is refused before it writes anything), the
    task fails this time: its error is in its status, the success record stays."""
    cluster.submit(text_task("kept", seed=7))
    first = cluster.wait_finished("kept")["status"]
    record = cluster.s3_object(first["output_url"])[0]
    delete_task(cluster, "kept")
    cluster.submit(text_task("kept", seed=7, alwayson_scripts={"NoSuchScript": {"args": []}}))
    failed = cluster.wait_finished("kept")["status"]
    assert (failed["phase"], failed["reason"]) == ("Failed", "WebUIError"), failed
    assert cluster.s3_object(first["output_url"])[0] == record  # the delivered result is still there, unchanged
    assert json.loads(record)["error"] is None


def test_extra_single_image_upscales_the_given_image(cluster: Cluster, files: Files) -> None:
    photo = sample_png(seed=3)
    task = {
        "metadata": {"id": "upscale", "runtime": "sdruntime", "tasktype": "extra-single-image", "prefix": "extras"},
        "content": {"image": files.publish("/photo.png", photo), "upscaling_resize": 2},
    }
    cluster.submit(task)
    status = cluster.wait_finished("upscale")["status"]
    assert status["phase"] == "Succeeded", status
    generated = read_standin_metadata(cluster.s3_object(status["images"][0])[0])
    assert generated is not None and generated["input_sha256"] == [hashlib.sha256(photo).hexdigest()]


def test_a_gif_result_is_stored_as_gif(cluster: Cluster) -> None:
    animated = {"AnimateDiff": {"args": [{"enable": True, "format": ["GIF"], "video_length": 4}]}}
    cluster.submit(text_task("animated", alwayson_scripts=animated))
    status = cluster.wait_finished("animated")["status"]
    assert status["phase"] == "Succeeded", status
    assert status["images"][0].endswith("/animated/image-1.gif")
    data, content_type = cluster.s3_object(status["images"][0])
    assert data[:6] == b"GIF89a" and content_type == "image/gif"


def test_an_s3_init_image_is_downloaded(cluster: Cluster) -> None:
    dog = sample_png(seed=4)
    cluster.stack.s3_client().put_object(Bucket=cluster.stack.bucket, Key="inputs/dog.png", Body=dog)
    cluster.submit(seed_task("from-s3", f"s3://{cluster.stack.bucket}/inputs/dog.png"))
    status = cluster.wait_finished("from-s3")["status"]
    assert status["phase"] == "Succeeded", status
    generated = read_standin_metadata(cluster.s3_object(status["images"][0])[0])
    assert generated is not None and generated["input_sha256"] == [hashlib.sha256(dog).hexdigest()]


def test_an_unreachable_link_fails_the_task_naming_the_url(cluster: Cluster, callbacks: CallbackReceiver) -> None:
    url = "http://127.0.0.1:9/gone/cat.png"  # port 9 (discard) is closed here: connection refused
    cluster.submit(seed_task("bad-link", url), callback={"url": callbacks.url})
    status = cluster.wait_finished("bad-link")["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "LinkFailed"
    assert url in status["message"]
    assert status["attempts"] == 1  # an input error is not retried
    body = wait_for(lambda: callbacks.for_id("bad-link"), 30, "the failure callback")[0]["body"]
    assert body["result"] is False and url in body["error"]
    cluster.wait_for_event("bad-link", "Warning", "LinkFailed")


def test_an_unknown_runtime_fails_at_once(cluster: Cluster) -> None:
    task = text_task("lost", runtime="no-such-runtime")
    cluster.submit(task)
    status = cluster.wait_finished("lost", timeout=15)["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "UnknownRuntime"
    assert "no-such-runtime" in status["message"]
    cluster.wait_for_event("lost", "Warning", "UnknownRuntime")


def test_a_static_runtime_refuses_another_model_and_never_switches(cluster: Cluster) -> None:
    cluster.submit(text_task("static-ok"))
    assert cluster.wait_finished("static-ok")["status"]["phase"] == "Succeeded"
    before = loaded_model(cluster, "sdruntime")
    cluster.submit(text_task("static-other", alwayson_scripts={"sd_model_checkpoint": "other.safetensors"}))
    status = cluster.wait_finished("static-other")["status"]
    assert status["phase"] == "Failed" and status["reason"] == "ModelNotServed"
    assert loaded_model(cluster, "sdruntime") == before
    assert STATIC_MODEL in before and "loads=0" in before


def test_a_dynamic_runtime_switches_to_another_existing_checkpoint(cluster: Cluster) -> None:
    task = text_task("switch", runtime="dynamic", alwayson_scripts={"sd_model_checkpoint": "dreamshaper.safetensors"})
    cluster.submit(task)
    status = cluster.wait_finished("switch")["status"]
    assert status["phase"] == "Succeeded", status
    assert status["model"].startswith("dreamshaper.safetensors")
    generated = read_standin_metadata(cluster.s3_object(status["images"][0])[0])
    assert generated is not None and generated["model"].startswith("dreamshaper")
    assert loaded_model(cluster, "dynamic").startswith("dreamshaper.safetensors")


def test_a_pod_reports_its_loaded_model_before_any_task_in_a_lease_it_owns_not_on_the_pod(cluster: Cluster) -> None:
    """The operator knows each pod's model from the start (model affinity needs it); the agent has no pod write:
    it reports in a Lease named after its pod, which goes away with the pod."""
    cluster.models("reporter", "dreamshaper.safetensors")
    cluster.runtime("reporter", "pool-b", dynamicModel=True, scaling={"minReplicas": 1, "maxReplicas": 1})

    def reported() -> dict[str, Any] | None:
        pods = cluster.get_runtime("reporter").get("status", {}).get("pods", [])
        return pods[0] if pods and pods[0].get("model") else None

    shown = wait_for(reported, 60, "the runtime status to show its pod's loaded model")
    assert shown["model"].startswith("dreamshaper.safetensors")
    leases = CoordinationV1Api(cluster.core.api_client)
    lease = leases.read_namespaced_lease(shown["name"], cluster.namespace)
    assert lease.metadata.annotations["sdtask.io/model"] == shown["model"]
    pod = cluster.core.read_namespaced_pod(shown["name"], cluster.namespace)
    assert [(o.kind, o.uid) for o in lease.metadata.owner_references] == [("Pod", pod.metadata.uid)]
    assert "sdtask.io/model" not in (pod.metadata.annotations or {})

    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "sdruntimes", "reporter")

    def lease_gone() -> bool:
        try:
            leases.read_namespaced_lease(shown["name"], cluster.namespace)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    wait_for(lease_gone, 90, "the pod's Lease to go with its pod (garbage collection)")


def test_a_dynamic_runtime_fails_a_missing_checkpoint_and_keeps_the_loaded_one(cluster: Cluster) -> None:
    cluster.submit(text_task("warm-up", runtime="dynamic"))
    assert cluster.wait_finished("warm-up")["status"]["phase"] == "Succeeded"
    before = loaded_model(cluster, "dynamic")
    task = text_task("missing", runtime="dynamic", alwayson_scripts={"sd_model_checkpoint": "nope-xl.safetensors"})
    cluster.submit(task)
    status = cluster.wait_finished("missing")["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "ModelNotFound"
    assert "model nope-xl.safetensors not found" in status["message"]
    assert loaded_model(cluster, "dynamic") == before  # nothing was unloaded


def test_a_web_ui_timeout_interrupts_and_fails_the_attempt(cluster: Cluster) -> None:
    before = interrupts(cluster)
    # 64 images at 50 ms each take over 3 s; the task allows 1 s.
    cluster.submit(text_task("too-slow", batch_size=8, n_iter=8), timeoutSeconds=1, maxRetries=0)
    status = cluster.wait_finished("too-slow")["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "Timeout"
    assert "interrupted" in status["message"]
    assert interrupts(cluster) == before + 1
    # The runtime is still healthy: the next task runs.
    cluster.submit(text_task("after-timeout"))
    assert cluster.wait_finished("after-timeout")["status"]["phase"] == "Succeeded"


class HeldReceiver:
    """A callback receiver that holds every request open until released (a slow or stuck endpoint of a user)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.arrived.set()
                receiver.release.wait(60)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/callback"


def test_a_stuck_callback_receiver_never_holds_the_gpu(cluster: Cluster) -> None:
    """Callbacks go out from a queue: the pod takes its next task while the first one's receiver still hangs."""
    held = HeldReceiver()
    try:
        cluster.submit(text_task("held-callback"), callback={"url": held.url})
        assert cluster.wait_finished("held-callback")["status"]["phase"] == "Succeeded"
        assert held.arrived.wait(30), "the callback was never sent"
        cluster.submit(text_task("after-held-callback"))
        assert cluster.wait_finished("after-held-callback")["status"]["phase"] == "Succeeded"
        assert cluster.status("held-callback")["callback"]["state"] == "Pending"  # still held meanwhile
    finally:
        held.release.set()
    delivered = wait_for(
        lambda: (cluster.status("held-callback").get("callback") or {}).get("state") == "Delivered", 60, "delivery"
    )
    held.server.shutdown()
    assert delivered


def test_a_stuck_callback_receiver_never_holds_up_the_operators_deadlines(cluster: Cluster) -> None:
    """The operator's own endings (here deadlines, from its housekeeping) queue their callbacks too: a receiver that
    hangs delays nothing else."""
    cluster.runtime("unplaceable", "pool-that-does-not-exist", checkpoint=STATIC_MODEL)
    held = HeldReceiver()
    try:
        cluster.submit(
            text_task("held-deadline", runtime="unplaceable"), activeDeadlineSeconds=1, callback={"url": held.url}
        )
        assert held.arrived.wait(30), "the callback was never sent"
        cluster.submit(text_task("next-deadline", runtime="unplaceable"), activeDeadlineSeconds=1)
        status = cluster.wait_finished("next-deadline", timeout=30)["status"]
        assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
        assert cluster.status("held-deadline")["callback"]["state"] == "Pending"  # still held meanwhile
    finally:
        held.release.set()
    wait_for(
        lambda: (cluster.status("held-deadline").get("callback") or {}).get("state") == "Delivered", 60, "delivery"
    )
    held.server.shutdown()


def test_a_legacy_body_routes_by_checkpoint_and_answers_in_the_legacy_shape(cluster: Cluster, files: Files) -> None:
    from sdtask.submit import manifest_from_body

    legacy = {
        "alwayson_scripts": {
            "task": "image-to-image",
            "id_task": "legacy-1",
            "sd_model_checkpoint": STATIC_MODEL,
            "save_dir": "legacy-out",
            "image_link": files.publish("/legacy.png", sample_png(seed=5)),
        },
        "prompt": "a cat",
        "steps": 8,
        "width": 64,
        "height": 64,
    }
    cluster.create(manifest_from_body(legacy))
    status = cluster.wait_finished("legacy-1")["status"]
    assert status["phase"] == "Succeeded", status
    assert status["runtime"] == "sdruntime"
    assert status["response"] == {
        "id_task": "legacy-1",
        "sd_model_checkpoint": status["model"],
        "output_location": f"s3://{cluster.stack.bucket}/legacy-out/legacy-1",
    }
    assert STATIC_MODEL in status["model"]


def test_a_callback_with_a_secret_is_signed_and_verifiable(cluster: Cluster, callbacks: CallbackReceiver) -> None:
    from sdtask.clients.callback import verify_signature

    cluster.core.create_namespaced_secret(
        cluster.namespace,
        {
            "metadata": {"name": "hook", "labels": {"sdtask.io/callback-secret": "true"}},
            "stringData": {"token": "s3cr3t-token"},
        },
    )
    cluster.submit(text_task("signed"), callback={"url": callbacks.url, "secretRef": {"name": "hook", "key": "token"}})
    assert cluster.wait_finished("signed")["status"]["phase"] == "Succeeded"
    delivered = wait_for(lambda: callbacks.for_id("signed"), 30, "the signed callback")[0]
    signature = delivered["headers"].get("X-SDTask-Signature")
    timestamp = delivered["headers"].get("X-SDTask-Timestamp")
    assert verify_signature(delivered["raw"], "s3cr3t-token", signature, timestamp, now=time.time())
    assert not verify_signature(delivered["raw"], "another-token", signature, timestamp, now=time.time())
    status = cluster.task("signed")["status"]
    assert "s3cr3t-token" not in json.dumps(status)  # the token never reaches status


def test_a_finished_task_is_deleted_after_its_ttl(cluster: Cluster) -> None:
    cluster.submit(text_task("short-lived"), ttlSecondsAfterFinished=1)
    assert cluster.wait_finished("short-lived")["status"]["phase"] == "Succeeded"
    wait_for(lambda: "short-lived" not in cluster.task_names(), 30, "the task to be cleaned up")
    assert cluster.s3_keys("t2i/short-lived/")  # its outputs stay


def test_a_task_that_cannot_start_before_its_deadline_fails(cluster: Cluster) -> None:
    cluster.runtime("nowhere", "pool-that-does-not-exist", checkpoint=STATIC_MODEL)
    cluster.submit(text_task("too-late", runtime="nowhere"), activeDeadlineSeconds=2)
    status = cluster.wait_finished("too-late", timeout=30)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
    assert "activeDeadlineSeconds" in status["message"]
    runtime = cluster.get_runtime("nowhere")
    degraded = next(c for c in runtime["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"  # and the runtime says its pod cannot be placed


def test_a_dynamic_runtime_fetches_a_missing_checkpoint_from_its_model_prefix(cluster: Cluster) -> None:
    bucket = cluster.stack.bucket
    cluster.upload_model("models/fetched-xl.safetensors")
    cluster.models("fetcher", "resident.safetensors")
    cluster.runtime("fetcher", "pool-b", dynamicModel=True, models={"s3Prefix": f"s3://{bucket}/models/"})
    task = text_task("fetch-model", runtime="fetcher", alwayson_scripts={"sd_model_checkpoint": "fetched-xl"})
    cluster.submit(task)
    status = cluster.wait_finished("fetch-model")["status"]
    assert status["phase"] == "Succeeded", status
    assert status["model"].startswith("fetched-xl.safetensors")
    assert (cluster.system.sidecars.models_dir(cluster.namespace, "fetcher") / "fetched-xl.safetensors").exists()


def test_an_unwritable_output_bucket_is_retried_then_fails_clearly(cluster: Cluster) -> None:
    output = {"bucket": "missing-bucket", "endpoint": cluster.stack.s3.url, "credentialsSecret": "s3"}
    cluster.models("no-bucket", STATIC_MODEL)
    cluster.runtime("no-bucket", "pool-a", checkpoint=STATIC_MODEL, output=output)
    cluster.submit(text_task("nowhere-to-write", runtime="no-bucket"), maxRetries=1)
    status = cluster.wait_finished("nowhere-to-write")["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "OutputUploadFailed")
    assert status["attempts"] == 2  # an infrastructure failure is retried, within maxRetries
    assert "s3://missing-bucket" in status["message"]
    events = cluster.wait_for_event("nowhere-to-write", "Warning", "OutputUploadFailed", count=2)
    warnings = [r for t, r, _ in events if t == "Warning"]
    assert warnings == ["OutputUploadFailed", "OutputUploadFailed"]  # the retry, then the final failure
    # The agent lives on: the same runtime still reports a pod ready for the next task.
    assert cluster.get_runtime("no-bucket")["status"]["readyReplicas"] >= 1


def wait_generating(cluster: Cluster, name: str) -> None:
    """Running AND generating (its progress shows): Running alone may still be before the generation (the output
    claim, links, the model), where a cancel stops the task before the Web UI is even asked, with nothing to
    interrupt."""

    def generating() -> bool:
        status = cluster.status(name)
        return bool(status.get("phase") == "Running" and status.get("progress"))

    wait_for(generating, 30, f"task {name} to generate")


def test_deleting_a_running_task_cancels_its_generation(cluster: Cluster) -> None:
    cluster.submit(text_task("cancel-me", batch_size=8, n_iter=8))  # 3.2 s of generation
    wait_generating(cluster, "cancel-me")
    before = interrupts(cluster)

    cluster.custom.delete_namespaced_custom_object("sdtask.io", "v1alpha1", cluster.namespace, "sdtasks", "cancel-me")

    wait_interrupted(cluster, before)
    cluster.submit(text_task("after-cancel"))  # the pod is free again at once
    assert cluster.wait_finished("after-cancel")["status"]["phase"] == "Succeeded"
    assert cluster.s3_keys("t2i/cancel-me/") == []  # nothing of the cancelled task was uploaded


def test_a_task_ended_elsewhere_while_it_generates_stops_and_is_never_overwritten_by_a_success(
    cluster: Cluster,
) -> None:
    """The operator ends a running task (its deadline, as the housekeeper writes it): the agent stops the generation
    at once, uploads nothing, and never writes its success over the failure; the pod takes the next task."""
    cluster.submit(text_task("ended-elsewhere", batch_size=8, n_iter=8))  # 3.2 s of generation
    wait_generating(cluster, "ended-elsewhere")
    before = interrupts(cluster)
    ended = {"phase": "Failed", "reason": "DeadlineExceeded", "message": "activeDeadlineSeconds passed"}
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.namespace, "sdtasks", "ended-elsewhere", {"status": ended}
    )
    wait_interrupted(cluster, before)
    cluster.submit(text_task("after-ended"))
    assert cluster.wait_finished("after-ended")["status"]["phase"] == "Succeeded"
    status = cluster.status("ended-elsewhere")
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
    assert cluster.s3_keys("t2i/ended-elsewhere/") == []


def test_a_task_requeued_elsewhere_while_it_generates_stops_and_stores_nothing(cluster: Cluster) -> None:
    """The operator requeues a running task (its pod counted lost: back to Pending, no pod): the task leaves this
    pod's watch, and the agent stops its generation at once and uploads nothing, as for a deleted task; the pod
    takes the next task."""
    cluster.submit(text_task("requeued-elsewhere", batch_size=8, n_iter=8))  # 3.2 s of generation
    wait_generating(cluster, "requeued-elsewhere")
    before = interrupts(cluster)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    requeued = {"phase": "Pending", "pod": "", "reason": "PodLost", "message": "pod went away", "notBefore": later}
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.namespace, "sdtasks", "requeued-elsewhere", {"status": requeued}
    )
    wait_interrupted(cluster, before)
    cluster.submit(text_task("after-requeued"))
    assert cluster.wait_finished("after-requeued")["status"]["phase"] == "Succeeded"
    assert cluster.status("requeued-elsewhere")["phase"] == "Pending"  # never written over by this pod's agent
    assert cluster.s3_keys("t2i/requeued-elsewhere/") == []


def test_a_callback_may_name_only_secrets_labelled_for_it(cluster: Cluster, callbacks: CallbackReceiver) -> None:
    """Any other Secret of the namespace is refused exactly like a missing one: a task can't probe or use it."""
    cluster.core.create_namespaced_secret(
        cluster.namespace, {"metadata": {"name": "db-password"}, "stringData": {"token": "hunter2"}}
    )
    errors = []
    for name, secret in (("cb-unlabelled", "db-password"), ("cb-missing", "no-such-secret")):
        cluster.submit(text_task(name), callback={"url": callbacks.url, "secretRef": {"name": secret, "key": "token"}})
        assert cluster.wait_finished(name)["status"]["phase"] == "Succeeded"

        def refused(n: str = name) -> dict[str, Any] | None:
            status = cluster.status(n)
            return status if (status.get("callback") or {}).get("state") == "Failed" else None

        failed = wait_for(refused, 30, f"the callback of {name} to be refused")
        errors.append(failed["callback"]["lastError"].replace(secret, "<name>"))
    expected = "callback secret <name>/token not found or not labelled sdtask.io/callback-secret=true"
    assert errors[0] == errors[1] == expected
    assert callbacks.for_id("cb-unlabelled") == [] and callbacks.for_id("cb-missing") == []
    assert "hunter2" not in json.dumps(cluster.task("cb-unlabelled"))


def test_content_nested_too_deep_fails_at_admission_and_the_operator_keeps_watching(cluster: Cluster) -> None:
    """1,500 levels: past what Python's json decodes at its default recursion limit (kopf's watch would break)."""
    deep: Any = "leaf"
    for _ in range(1_500):
        deep = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # the test's own Kubernetes client (de)serialises recursively too
    try:
        cluster.submit(text_task("too-deep", alwayson_scripts={"x": {"args": deep}}))
        status = cluster.wait_finished("too-deep", timeout=30)["status"]
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "sdtasks", "too-deep")
        wait_for(lambda: "too-deep" not in cluster.task_names(), 30, "the deep task to go")
    finally:
        sys.setrecursionlimit(limit)
    assert (status["phase"], status["reason"]) == ("Failed", "ContentTooDeep")
    assert "more than 64 levels" in status["message"]
    cluster.submit(text_task("after-deep"))  # the watch of every other task still works
    assert cluster.wait_finished("after-deep")["status"]["phase"] == "Succeeded"
