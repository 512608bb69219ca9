"""Simulated GPU node pools: Node objects that kwok keeps alive and runs pods on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

POOL_LABEL = "sdtask.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class NodePool:
    name: str
    nodes: int = 1
    gpus_per_node: int = 1
    cpu: str = "8"
    memory: str = "32Gi"
    pods: int = 110
    gpu_taint: bool = True
    labels: dict[str, str] = field(default_factory=dict)


# Two pools so tests can show that runtimes stay on their own pool.
DEFAULT_POOLS: tuple[NodePool, ...] = (
    NodePool(name="pool-a", nodes=2, gpus_per_node=1, labels={"nvidia.com/gpu.product": "NVIDIA-A10G"}),
    NodePool(name="pool-b", nodes=1, gpus_per_node=2, labels={"nvidia.com/gpu.product": "NVIDIA-L4"}),
)


def node_names(pool: NodePool) -> list[str]:
    return [f"kwok-{pool.name}-{index}" for index in range(pool.nodes)]


def node_manifest(pool: NodePool, name: str) -> dict[str, Any]:
    """A Node as a GPU cloud node looks to the scheduler: pool label, GPU taint, full capacity (kwok keeps it)."""
    resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods), GPU_RESOURCE: str(pool.gpus_per_node)}
    taints = [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}] if pool.gpu_taint else []
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "type": "kwok",
                POOL_LABEL: pool.name,
                **pool.labels,
            },
        },
        "spec": {"taints": taints},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


def pool_manifests(pools: tuple[NodePool, ...]) -> list[dict[str, Any]]:
    return [node_manifest(pool, name) for pool in pools for name in node_names(pool)]
