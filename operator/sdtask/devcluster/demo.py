"""`make demo`: the seed image-to-image task, end to end, on a local stack. No GPU, no cloud account.

It applies examples/runtime-static.yaml and examples/task-image-to-image.yaml with the few changes a laptop needs (the
local S3 endpoint, and the init image served from loopback instead of the internet), waits for the task, downloads the
result and prints where it is and the response object the old API returned.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import CoreV1Api, CustomObjectsApi

from sdtask.constants import GROUP, VERSION
from sdtask.devcluster.processes import run_folder_command
from sdtask.devcluster.sidecars import StandinTiming
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.system import LocalSystem
from sdtask.devcluster.waiting import wait_for
from sdtask.naming import parse_s3_uri
from sdtask.standin.images import encode_png, pattern_digest, pattern_rgb

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NAMESPACE = "demo"


def serve_once(data: bytes) -> tuple[ThreadingHTTPServer, str]:
    """Stands in for the internet host of the seed task's init image."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/cat.png"


def local_runtime(stack: DevStack) -> dict[str, Any]:
    runtime: dict[str, Any] = yaml.safe_load((EXAMPLES / "runtime-static.yaml").read_text())
    spec = runtime["spec"]
    spec["output"].update(bucket=stack.bucket, endpoint=stack.s3.url, credentialsSecret="s3")
    spec["agent"] = {"allowPrivateLinks": True}  # the init image comes from loopback here
    return runtime


def seed_task(init_image: str) -> dict[str, Any]:
    task: dict[str, Any] = yaml.safe_load((EXAMPLES / "task-image-to-image.yaml").read_text())
    task["spec"]["task"]["content"]["init_images"] = [init_image]
    return task


def run_demo(out: Path) -> int:
    """Run the seed image-to-image task end to end on a local stack."""
    print("starting the local stack (first run builds the control plane from the Go module proxy)...", flush=True)
    with DevStack() as stack, LocalSystem(stack, timing=StandinTiming(load_delay=1.0, image_delay=0.5)):
        server, cat_url = serve_once(encode_png(64, 64, pattern_rgb(pattern_digest("cat"), 64, 64)))
        with stack.api_client() as client:
            core, custom = CoreV1Api(client), CustomObjectsApi(client)
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            credentials = {
                "AWS_ACCESS_KEY_ID": stack.s3.access_key_id,
                "AWS_SECRET_ACCESS_KEY": stack.s3.secret_access_key,
            }
            core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "s3"}, "stringData": credentials})
            runtime = local_runtime(stack)
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "sdruntimes", runtime)
            print(f"applied SDRuntime {runtime['metadata']['name']} (pool-a, scaled to zero until a task arrives)")
            task = seed_task(cat_url)
            name = task["metadata"]["name"]
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "sdtasks", task)
            print(f"applied SDTask {name} (init image {cat_url})", flush=True)

            def finished() -> dict[str, Any] | None:
                found: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "sdtasks", name)
                return found if (found.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

            status = wait_for(finished, 180, f"task {name} to finish", interval=0.2)["status"]
            server.shutdown()
            events = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
            # Each step is a condition of the task; Events are posted for outcomes and problems only.
            print("\nwhat happened (kubectl describe sdt test-i2i):")
            for condition in sorted(status.get("conditions") or [], key=lambda c: c.get("lastTransitionTime") or ""):
                kind, state, reason = condition["type"], condition.get("status", ""), condition.get("reason", "")
                print(f"  {kind:10} {state:6} {reason:10} {condition.get('message', '')}")
            for event in sorted(events, key=lambda e: e.event_time or e.first_timestamp):
                print(f"  {event.type:8} {event.reason:10} {event.message}")
            if status["phase"] != "Succeeded":
                print(f"\ntask failed: {status.get('reason')}: {status.get('message')}")
                return 1
            out.mkdir(parents=True, exist_ok=True)
            s3 = stack.s3_client()
            saved = []
            for uri in [*status["images"], status["output_url"]]:
                bucket, key = parse_s3_uri(uri)
                target = out / Path(key).name
                target.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                saved.append(target)
            print(f"\noutput_location: {status['output_location']}")
            for path in saved:
                print(f"downloaded: {path.resolve()}")
            print(f"response: {json.dumps(status['response'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_folder_command(
        "sdtask.devcluster.demo", run_demo, "--out", "demo-output", "where the result images are downloaded", argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
