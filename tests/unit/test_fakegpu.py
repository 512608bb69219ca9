"""The real node's fake GPU device plugin against a stand-in kubelet Registration service, over real gRPC sockets:
it registers, answers Allocate as NVIDIA's plugin does, and registers again after a kubelet restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from sdtask.devcluster.fakegpu import KUBELET_SOCKET, FakeGpuPlugin, M
from sdtask.devcluster.waiting import wait_for


class Kubelet:
    """The kubelet's side of registration: a Registration service on kubelet.sock that records requests."""

    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.requests: list[Any] = []
        self.server: grpc.Server | None = None

    def start(self) -> None:
        def register(request: Any, context: grpc.ServicerContext) -> Any:
            self.requests.append(request)
            return M["Empty"]()

        handler = grpc.method_handlers_generic_handler(
            "v1beta1.Registration",
            {
                "Register": grpc.unary_unary_rpc_method_handler(
                    register,
                    request_deserializer=M["RegisterRequest"].FromString,
                    response_serializer=M["Empty"].SerializeToString,
                )
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(f"unix://{self.plugin_dir / KUBELET_SOCKET}")
        self.server.start()

    def restart(self) -> None:
        """As a restarted kubelet does: gone, its plugin folder emptied, back on a new socket."""
        assert self.server is not None
        self.server.stop(grace=0).wait()
        for path in self.plugin_dir.iterdir():
            path.unlink()
        self.start()


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[tuple[FakeGpuPlugin, Kubelet]]:
    kubelet = Kubelet(tmp_path)
    kubelet.start()
    fake = FakeGpuPlugin("nvidia.com/gpu", 2, plugin_dir=tmp_path, endpoint="fake.sock")
    thread = threading.Thread(target=fake.run, daemon=True)
    thread.start()
    yield fake, kubelet
    fake.stopping.set()
    thread.join(timeout=10)
    if kubelet.server:
        kubelet.server.stop(grace=0)


def test_registers_its_gpus_and_answers_allocate(plugin: tuple[FakeGpuPlugin, Kubelet]) -> None:
    fake, kubelet = plugin
    wait_for(lambda: kubelet.requests, timeout=10, what="the plugin to register")
    (request,) = kubelet.requests
    assert (request.version, request.resource_name, request.endpoint) == ("v1beta1", "nvidia.com/gpu", "fake.sock")
    with grpc.insecure_channel(f"unix://{fake.socket}") as channel:
        devices = next(
            channel.unary_stream(
                "/v1beta1.DevicePlugin/ListAndWatch",
                request_serializer=M["Empty"].SerializeToString,
                response_deserializer=M["ListAndWatchResponse"].FromString,
            )(M["Empty"](), timeout=5)
        )
        assert [(d.ID, d.health) for d in devices.devices] == [("fake-gpu-0", "Healthy"), ("fake-gpu-1", "Healthy")]
        allocate = channel.unary_unary(
            "/v1beta1.DevicePlugin/Allocate",
            request_serializer=M["AllocateRequest"].SerializeToString,
            response_deserializer=M["AllocateResponse"].FromString,
        )
        answer = allocate(
            M["AllocateRequest"](container_requests=[M["ContainerAllocateRequest"](devices_ids=["fake-gpu-1"])]),
            timeout=5,
        )
    assert [dict(r.envs) for r in answer.container_responses] == [{"NVIDIA_VISIBLE_DEVICES": "fake-gpu-1"}]


def test_registers_again_after_a_kubelet_restart(plugin: tuple[FakeGpuPlugin, Kubelet]) -> None:
    fake, kubelet = plugin
    wait_for(lambda: kubelet.requests, timeout=10, what="the first registration")
    kubelet.restart()
    wait_for(lambda: len(kubelet.requests) == 2, timeout=10, what="a second registration after the restart")
    wait_for(fake.socket.exists, timeout=10, what="the plugin to serve its socket again")
