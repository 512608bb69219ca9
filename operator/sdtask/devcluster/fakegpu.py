"""A fake GPU device plugin for the real node: the kubelet advertises `nvidia.com/gpu` as it would on a GPU node.

It speaks the kubelet's device plugin API (k8s.io/kubelet pkg/apis/deviceplugin/v1beta1/api.proto) over gRPC, as
NVIDIA's plugin does: it serves DevicePlugin on a socket in the kubelet's plugin folder, registers on the kubelet's
Registration socket, streams its devices with ListAndWatch and answers Allocate with NVIDIA_VISIBLE_DEVICES, so a pod
asking for a GPU is scheduled, admitted and started through the real device manager. No device files are mounted.

A restarted kubelet empties its plugin folder and forgets every plugin, so the plugin watches the kubelet's socket
and registers again whenever it is replaced (as the real plugins do).

The messages are built from a descriptor written here (only the fields used; unknown fields are skipped when parsing),
so no generated code or protoc is needed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

API_VERSION = "v1beta1"
PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")  # fixed in the kubelet, whatever its --root-dir
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"

log = logging.getLogger("sdtask.fakegpu")

_F = descriptor_pb2.FieldDescriptorProto
# message name -> [(field, number, type, label, message type)]
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "Empty": [],
    "DevicePluginOptions": [
        ("pre_start_required", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("get_preferred_allocation_available", 2, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
    ],
    "RegisterRequest": [
        ("version", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("endpoint", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("resource_name", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("options", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".v1beta1.DevicePluginOptions"),
    ],
    "Device": [
        ("ID", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("health", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
    "ListAndWatchResponse": [("devices", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".v1beta1.Device")],
    "ContainerAllocateRequest": [("devices_ids", 1, _F.TYPE_STRING, _F.LABEL_REPEATED, "")],
    "AllocateRequest": [
        ("container_requests", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".v1beta1.ContainerAllocateRequest")
    ],
    "ContainerAllocateResponse": [
        ("envs", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".v1beta1.ContainerAllocateResponse.EnvsEntry")
    ],
    "AllocateResponse": [
        ("container_responses", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".v1beta1.ContainerAllocateResponse")
    ],
    "PreStartContainerRequest": [("devices_ids", 1, _F.TYPE_STRING, _F.LABEL_REPEATED, "")],
    "PreStartContainerResponse": [],
    "PreferredAllocationRequest": [],
    "PreferredAllocationResponse": [],
}


def _messages() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(name="sdtask_deviceplugin_v1beta1.proto", package="v1beta1")
    file.syntax = "proto3"
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            added = message.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name
        if name == "ContainerAllocateResponse":  # map<string, string> envs = 1
            entry = message.nested_type.add(name="EnvsEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
            entry.field.add(name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1beta1.{name}")) for name in _MESSAGES}


M = _messages()


def device_ids(count: int) -> list[str]:
    return [f"fake-gpu-{index}" for index in range(count)]


class FakeGpuPlugin:
    def __init__(self, resource: str, count: int, plugin_dir: Path = PLUGIN_DIR, endpoint: str = "") -> None:
        self.resource = resource
        self.devices = device_ids(count)
        self.plugin_dir = plugin_dir
        self.endpoint = endpoint or f"sdtask-fake-gpu-{os.getpid()}.sock"
        self.server: grpc.Server | None = None
        self.stopping = threading.Event()

    # DevicePlugin service
    def get_options(self, request: Any, context: grpc.ServicerContext) -> Any:
        return M["DevicePluginOptions"]()

    def list_and_watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        devices = [M["Device"](ID=device, health=HEALTHY) for device in self.devices]
        yield M["ListAndWatchResponse"](devices=devices)
        # Fake devices never change health: keep the stream open until the kubelet or this plugin goes away.
        while context.is_active() and not self.stopping.wait(1):
            pass

    def allocate(self, request: Any, context: grpc.ServicerContext) -> Any:
        responses = [
            M["ContainerAllocateResponse"](envs={"NVIDIA_VISIBLE_DEVICES": ",".join(item.devices_ids)})
            for item in request.container_requests
        ]
        log.info("allocated %s", [list(item.devices_ids) for item in request.container_requests])
        return M["AllocateResponse"](container_responses=responses)

    def pre_start(self, request: Any, context: grpc.ServicerContext) -> Any:
        return M["PreStartContainerResponse"]()

    def preferred(self, request: Any, context: grpc.ServicerContext) -> Any:
        return M["PreferredAllocationResponse"]()

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(method: Any, request: str, response: str) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=M[request].FromString, response_serializer=M[response].SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            "v1beta1.DevicePlugin",
            {
                "GetDevicePluginOptions": unary(self.get_options, "Empty", "DevicePluginOptions"),
                "ListAndWatch": grpc.unary_stream_rpc_method_handler(
                    self.list_and_watch,
                    request_deserializer=M["Empty"].FromString,
                    response_serializer=M["ListAndWatchResponse"].SerializeToString,
                ),
                "GetPreferredAllocation": unary(
                    self.preferred, "PreferredAllocationRequest", "PreferredAllocationResponse"
                ),
                "Allocate": unary(self.allocate, "AllocateRequest", "AllocateResponse"),
                "PreStartContainer": unary(self.pre_start, "PreStartContainerRequest", "PreStartContainerResponse"),
            },
        )

    @property
    def socket(self) -> Path:
        return self.plugin_dir / self.endpoint

    def serve(self) -> None:
        self.stop_server()
        self.socket.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((self._handlers(),))
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self.server = server

    def register(self) -> None:
        with grpc.insecure_channel(f"unix://{self.plugin_dir / KUBELET_SOCKET}") as channel:
            register = channel.unary_unary(
                "/v1beta1.Registration/Register",
                request_serializer=M["RegisterRequest"].SerializeToString,
                response_deserializer=M["Empty"].FromString,
            )
            register(
                M["RegisterRequest"](version=API_VERSION, endpoint=self.endpoint, resource_name=self.resource),
                timeout=10,
            )
        log.info("registered %d x %s with the kubelet as %s", len(self.devices), self.resource, self.endpoint)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop(grace=1)
            self.server = None

    def run(self) -> None:
        """Register whenever the kubelet's socket appears or is replaced (a kubelet restart), until stopped."""
        registered_with: int | None = None
        while not self.stopping.is_set():
            try:
                kubelet_inode = (self.plugin_dir / KUBELET_SOCKET).stat().st_ino
            except FileNotFoundError:
                kubelet_inode = None
            # A restarted kubelet removes our socket too: serve again before registering.
            if kubelet_inode is not None and (kubelet_inode != registered_with or not self.socket.exists()):
                try:
                    self.serve()
                    self.register()
                    registered_with = kubelet_inode
                except grpc.RpcError as error:
                    log.warning("registration failed, retrying: %s", error)
            self.stopping.wait(1)
        self.stop_server()
        self.socket.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fake GPU device plugin for the local real node")
    parser.add_argument("--resource", default="nvidia.com/gpu")
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--plugin-dir", type=Path, default=PLUGIN_DIR)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    plugin = FakeGpuPlugin(options.resource, options.count, options.plugin_dir)
    signal.signal(signal.SIGTERM, lambda *_: plugin.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: plugin.stopping.set())
    options.plugin_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    plugin.run()
    log.info("stopped after %.0fs", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
