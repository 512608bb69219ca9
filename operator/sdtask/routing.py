"""Which runtime serves a task, and with which model. Pure: the operator passes what its indices hold."""

from __future__ import annotations

from dataclasses import dataclass

from sdtask.checkpoints import same_checkpoint


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    dynamic: bool
    checkpoint: str | None
    deleting: bool = False  # deletionTimestamp set: it takes no new task


@dataclass(frozen=True)
class Route:
    runtime: str
    model: str | None  # None: whatever the pod has loaded (dynamic runtime, no checkpoint asked for)


@dataclass(frozen=True)
class RouteError:
    reason: str
    message: str


def route_task(runtime_name: str, checkpoint: str | None, runtimes: list[RuntimeInfo]) -> Route | RouteError:
    """Route by name. An empty name (legacy form) routes by checkpoint: a static runtime serving it, else dynamic."""
    if runtime_name:
        runtime = next((r for r in runtimes if r.name == runtime_name), None)
        if runtime is None:
            return RouteError("UnknownRuntime", f"runtime {runtime_name!r} does not exist in this namespace")
        if runtime.deleting:
            return RouteError("RuntimeDeleted", f"runtime {runtime_name!r} is being deleted")
        return _model_on(runtime, checkpoint)
    runtimes = [r for r in runtimes if not r.deleting]
    if not checkpoint:
        return RouteError("NoRoute", "task names no runtime and no checkpoint to route by")
    ordered = sorted(runtimes, key=lambda r: r.name)
    static = next((r for r in ordered if not r.dynamic and same_checkpoint(r.checkpoint, checkpoint)), None)
    if static:
        return Route(static.name, static.checkpoint)
    dynamic = next((r for r in ordered if r.dynamic), None)
    if dynamic:
        return Route(dynamic.name, checkpoint)
    return RouteError("NoRuntimeForModel", f"no runtime serves checkpoint {checkpoint!r} and none switches models")


def _model_on(runtime: RuntimeInfo, checkpoint: str | None) -> Route | RouteError:
    if runtime.dynamic:
        return Route(runtime.name, checkpoint)
    if checkpoint and not same_checkpoint(checkpoint, runtime.checkpoint):
        return RouteError(
            "ModelNotServed",
            f"runtime {runtime.name!r} serves only {runtime.checkpoint!r} (dynamicModel is off); "
            f"task asks for {checkpoint!r}",
        )
    return Route(runtime.name, runtime.checkpoint)
