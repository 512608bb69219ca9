"""Build (once) and locate the control-plane binaries the local stack runs.

No Docker engine exists on the machines this project is developed on, so the binaries are built from the Go module proxy
into a cache keyed by version. Kubernetes' own go.mod replaces its staging modules with local paths, which `go install`
refuses; a small wrapper module that requires k8s.io/kubernetes and maps every staging module to its published version
builds the commands instead (etcd the same way, in its own module so its dependencies do not move Kubernetes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# The real node's binaries and kubectl: same module and flags, their own cache folder, so adding them did not
# invalidate the control-plane binaries already cached on every machine.
NODE_COMMANDS = ("kubelet", "kube-proxy", "kubectl")


class BinaryBuildError(RuntimeError):
    """A binary could not be built or found; the message says which and why."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kwok_stages: Path  # directory of the stage YAML files shipped in the kwok module


def cache_root() -> Path:
    configured = os.environ.get("SDTASK_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdtask"


def _log(message: str) -> None:
    print(f"[sdtask devcluster] {message}", file=sys.stderr, flush=True)


def _go(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    go = shutil.which("go")
    if go is None:
        raise BinaryBuildError(
            "the Go toolchain ('go') is needed to build the control-plane binaries once; install Go 1.26"
        )
    full_env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", **(env or {})}
    proc = subprocess.run([go, *args], cwd=cwd, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-30:])
        raise BinaryBuildError(f"go {' '.join(args[:3])} failed in {cwd}:\n{tail}")
    return proc.stdout


def _module_info(module: str, version: str, workdir: Path) -> dict[str, str]:
    out = _go(["mod", "download", "-json", f"{module}@{version}"], cwd=workdir)
    info: dict[str, str] = json.loads(out)
    if info.get("Error"):
        raise BinaryBuildError(f"cannot download {module}@{version}: {info['Error']}")
    return info


def staging_replacements(kubernetes_go_mod: str, staging_version: str) -> list[str]:
    """The `replace` lines mapping each staging module of k8s.io/kubernetes to its published version."""
    names = sorted(set(re.findall(r"(k8s\.io/[\w.-]+)\s+=>\s+\./staging/src/", kubernetes_go_mod)))
    return [f"\t{name} => {name} {staging_version}" for name in names]


def _write_wrapper(directory: Path, module: str, go_mod_body: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "go.mod").write_text(f"module sdtask.local/{module}\n\ngo 1.26\n\n{go_mod_body}")


def _ldflags_kubernetes(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    base = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s -w",
            f"-X {base}.gitVersion={version}",
            f"-X {base}.gitMajor={major}",
            f"-X {base}.gitMinor={minor}",
            f"-X {base}.gitTreeState=clean",
            f"-X {base}.buildDate=1970-01-01T00:00:00Z",
        ]
    )


_STATIC_ENV = {"CGO_ENABLED": "0"}


def _build_kubernetes(dest: Path, work: Path, commands: tuple[str, ...] = KUBE_COMMANDS) -> None:
    info = _module_info("k8s.io/kubernetes", KUBERNETES_VERSION, work)
    go_mod = Path(info["GoMod"]).read_text()
    staging_version = "v0." + KUBERNETES_VERSION.lstrip("v").split(".", 1)[1]
    body = (
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n"
        + "\n".join(staging_replacements(go_mod, staging_version))
        + "\n)\n"
    )
    _write_wrapper(work, "kubernetes", body)
    _log(f"building {', '.join(commands)} {KUBERNETES_VERSION} (first time only; 10-25 minutes on 2 cores)")
    tmp = dest.parent / (dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in commands]
    _go(
        [
            "build",
            "-trimpath",
            "-tags",
            "selinux,notest",
            "-ldflags",
            _ldflags_kubernetes(KUBERNETES_VERSION),
            "-o",
            str(tmp) + "/",
            *packages,
        ],
        cwd=work,
        env=_STATIC_ENV,
    )
    tmp.rename(dest)


def _build_etcd(dest: Path, work: Path) -> None:
    _write_wrapper(work, "etcd", f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n")
    _log(f"building etcd {ETCD_VERSION} (first time only)")
    tmp = dest.parent / (dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _go(
        ["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "etcd"), "go.etcd.io/etcd/server/v3"],
        cwd=work,
        env=_STATIC_ENV,
    )
    tmp.rename(dest)


def _build_kwok(dest: Path, work: Path) -> None:
    _write_wrapper(work, "kwok", f"require sigs.k8s.io/kwok {KWOK_VERSION}\n")
    _log(f"building kwok {KWOK_VERSION} (first time only)")
    tmp = dest.parent / (dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _go(
        ["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "kwok"), "sigs.k8s.io/kwok/cmd/kwok"],
        cwd=work,
        env=_STATIC_ENV,
    )
    info = _module_info("sigs.k8s.io/kwok", KWOK_VERSION, work)
    shutil.copytree(Path(info["Dir"]) / "kustomize" / "stage", tmp / "stage")
    for path in (tmp / "stage").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the module cache is read-only
    tmp.rename(dest)


def ensure_binaries() -> Binaries:
    """Return the cached binaries, building whichever is missing. Safe to call from several processes in turn."""
    root = cache_root()
    bin_root = root / "bin"
    builds = root / "build"
    kube_dir = bin_root / f"kubernetes-{KUBERNETES_VERSION}"
    etcd_dir = bin_root / f"etcd-{ETCD_VERSION}"
    kwok_dir = bin_root / f"kwok-{KWOK_VERSION}"
    for directory, builder, work in (
        (etcd_dir, _build_etcd, builds / f"etcd-{ETCD_VERSION}"),
        (kwok_dir, _build_kwok, builds / f"kwok-{KWOK_VERSION}"),
        (kube_dir, _build_kubernetes, builds / f"kubernetes-{KUBERNETES_VERSION}"),
    ):
        if not directory.is_dir():
            work.mkdir(parents=True, exist_ok=True)
            builder(directory, work)
    return Binaries(
        etcd=etcd_dir / "etcd",
        kube_apiserver=kube_dir / "kube-apiserver",
        kube_controller_manager=kube_dir / "kube-controller-manager",
        kube_scheduler=kube_dir / "kube-scheduler",
        kwok=kwok_dir / "kwok",
        kwok_stages=kwok_dir / "stage",
    )


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    kubectl: Path
    kubernetes_module: Path  # the k8s.io/kubernetes module source (the pause container's pause.c is in it)


def _build_node_commands(dest: Path, work: Path) -> None:
    _build_kubernetes(dest, work, NODE_COMMANDS)


def ensure_node_binaries() -> NodeBinaries:
    """kubelet, kube-proxy and kubectl, built on first use (about a minute when the control plane is cached)."""
    root = cache_root()
    directory = root / "bin" / f"kubernetes-node-{KUBERNETES_VERSION}"
    # The same wrapper module as the control plane: its module downloads and build cache are reused.
    work = root / "build" / f"kubernetes-{KUBERNETES_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    if not directory.is_dir():
        _build_node_commands(directory, work)
    _write_wrapper_if_missing(work)
    module = Path(_module_info("k8s.io/kubernetes", KUBERNETES_VERSION, work)["Dir"])
    return NodeBinaries(
        kubelet=directory / "kubelet",
        kube_proxy=directory / "kube-proxy",
        kubectl=directory / "kubectl",
        kubernetes_module=module,
    )


def _write_wrapper_if_missing(work: Path) -> None:
    if not (work / "go.mod").is_file():
        _write_wrapper(work, "kubernetes", f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n")


if __name__ == "__main__":
    found = ensure_binaries()
    for field, value in found.__dict__.items():
        print(f"{field}: {value}")
    if "--node" in sys.argv[1:]:
        for field, value in ensure_node_binaries().__dict__.items():
            print(f"{field}: {value}")
