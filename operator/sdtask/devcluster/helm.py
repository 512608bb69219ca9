"""Build (once) and run the helm binary the chart tests use.

Like the control-plane binaries (see sdtask.devcluster.binaries), helm is built from the Go module proxy into the cache,
keyed by version. helm's go.mod has no `replace` directives, so a wrapper module that simply requires it builds
cmd/helm with exactly the dependency versions helm itself pins. The ldflags are those of helm's own Makefile: the
version, and the Kubernetes version helm assumes when it renders offline (`helm template`, `helm lint`), derived from
the client-go it is built with.

An installed helm can be used instead by pointing SDTASK_HELM at it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from sdtask.devcluster.binaries import (
    _STATIC_ENV,
    BinaryBuildError,
    _go,
    _log,
    _module_info,
    _write_wrapper,
    cache_root,
)

HELM_VERSION = "v3.21.4"
HELM_MODULE = "helm.sh/helm/v3"
HELM_ENV = "SDTASK_HELM"


class HelmError(RuntimeError):
    """A helm command failed; the message holds the command and helm's own error output."""


def kubernetes_version_of(helm_go_mod: str) -> tuple[str, str]:
    """(major, minor) of Kubernetes for the client-go helm requires: k8s.io/client-go v0.36.2 -> ("1", "36")."""
    found = re.search(r"^\s*k8s\.io/client-go\s+v0\.(\d+)\.\d+", helm_go_mod, re.MULTILINE)
    if not found:
        raise BinaryBuildError(f"{HELM_MODULE} {HELM_VERSION}: no k8s.io/client-go requirement in its go.mod")
    return "1", found.group(1)


def helm_ldflags(version: str, kube_major: str, kube_minor: str) -> str:
    internal = f"{HELM_MODULE}/internal/version"
    flags = ["-s -w", f"-X {internal}.version={version}", f"-X {internal}.gitTreeState=clean"]
    for package in ("pkg/lint/rules", "pkg/chartutil"):
        flags += [
            f"-X {HELM_MODULE}/{package}.k8sVersionMajor={kube_major}",
            f"-X {HELM_MODULE}/{package}.k8sVersionMinor={kube_minor}",
        ]
    return " ".join(flags)


def _build_helm(dest: Path, work: Path) -> None:
    _write_wrapper(work, "helm", f"require {HELM_MODULE} {HELM_VERSION}\n")
    info = _module_info(HELM_MODULE, HELM_VERSION, work)
    major, minor = kubernetes_version_of(Path(info["GoMod"]).read_text())
    _log(f"building helm {HELM_VERSION} (first time only; about a minute on 2 cores)")
    tmp = dest.parent / (dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _go(
        [
            "build",
            "-trimpath",
            "-ldflags",
            helm_ldflags(HELM_VERSION, major, minor),
            "-o",
            str(tmp / "helm"),
            f"{HELM_MODULE}/cmd/helm",
        ],
        cwd=work,
        env=_STATIC_ENV,
    )
    tmp.rename(dest)


def ensure_helm() -> Path:
    """The helm binary: SDTASK_HELM if set, else the cached build (built now if missing)."""
    configured = os.environ.get(HELM_ENV)
    if configured:
        path = Path(configured)
        if not os.access(path, os.X_OK):
            raise BinaryBuildError(f"{HELM_ENV}={configured} is not an executable file")
        return path
    root = cache_root()
    directory = root / "bin" / f"helm-{HELM_VERSION}"
    if not directory.is_dir():
        work = root / "build" / f"helm-{HELM_VERSION}"
        work.mkdir(parents=True, exist_ok=True)
        _build_helm(directory, work)
    return directory / "helm"


def helm_env(home: Path) -> dict[str, str]:
    """Environment that keeps helm's cache, config and data under `home` instead of the user's own directories."""
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def run_helm(
    args: Sequence[str], *, home: Path, kubeconfig: Path | None = None, helm: Path | None = None, timeout: float = 120
) -> str:
    """Run helm and return its stdout; raise HelmError with its stderr when it fails."""
    argv = [str(helm or ensure_helm()), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    proc = subprocess.run(argv, env=helm_env(home), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr or proc.stdout}")
    return proc.stdout


if __name__ == "__main__":
    print(ensure_helm())
