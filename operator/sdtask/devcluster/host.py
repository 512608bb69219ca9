"""What a real node does to this machine, and undoes: cgroups, iptables chains, network namespaces, mounts, host
tools, the pause image. Functions only; `realnode.RealNode` calls them in order."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sdtask.devcluster import images
from sdtask.devcluster.binaries import NodeBinaries, cache_root
from sdtask.devcluster.processes import StackError

PAUSE_IMAGE = "sdtask.local/pause:3.10"
IPTABLES_TABLES = ("filter", "nat", "mangle")
HOST_TOOLS = ("containerd", "ctr", "runc", "iptables", "ip", "gcc")
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_ROOT = "sdtask-node"
CGROUPS = Path("/sys/fs/cgroup")


def cgroup_hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies (cgroup v2 has one tree at /sys/fs/cgroup itself)."""
    if (CGROUPS / "cgroup.controllers").exists():
        return [CGROUPS]
    return [h for h in CGROUPS.iterdir() if h.is_dir() and not h.is_symlink() and h.name != "unified"]


def make_cgroup_root() -> None:
    """The kubelet wants its --cgroup-root to exist in every hierarchy; a cpuset needs its CPUs and memory nodes."""
    for hierarchy in cgroup_hierarchies():
        cgroup = hierarchy / CGROUP_ROOT
        cgroup.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (cgroup / name).exists() and not (cgroup / name).read_text().strip():
                (cgroup / name).write_text((hierarchy / name).read_text())


def run(argv: list[str], *, check: bool = True, stdin: Any = None, timeout: float = 120) -> str:
    proc = subprocess.run(argv, capture_output=True, text=stdin is None, stdin=stdin, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise StackError("real node", f"{' '.join(argv[:4])} failed (exit {proc.returncode}): {err.strip()[-1500:]}")
    out = proc.stdout
    return out if isinstance(out, str) else out.decode(errors="replace")


def preflight_problems() -> list[str]:
    """Why a real node can't start on this machine (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("it needs root (containerd, the kubelet and the CNI bridge manage namespaces and mounts)")
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    missing += [f"CNI plugin {p}" for p in ("bridge", "host-local") if not (CNI_BIN_DIR / p).is_file()]
    if missing:
        problems.append(f"missing on this machine: {', '.join(missing)} (scripts/host-packages.sh installs them)")
    return problems


def iptables_chains() -> dict[tuple[str, str], set[str]]:
    """Chains per (command, table), to tell the ones the kubelet and kube-proxy add from the machine's own."""
    found: dict[tuple[str, str], set[str]] = {}
    for command in ("iptables", "ip6tables"):
        if shutil.which(command) is None:
            continue
        for table in IPTABLES_TABLES:
            out = run([command, "-w", "-t", table, "-S"], check=False)
            found[(command, table)] = {line.split()[1] for line in out.splitlines() if line.startswith("-N ")}
    return found


def remove_chains(before: dict[tuple[str, str], set[str]]) -> None:
    for (command, table), chains in iptables_chains().items():
        added = {c for c in chains - before.get((command, table), set()) if c.startswith("KUBE-")}
        if not added:
            continue
        rules = run([command, "-w", "-t", table, "-S"], check=False).splitlines()
        for rule in rules:  # first every rule jumping into an added chain, from any chain
            parts = rule.split()
            if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in added:
                run([command, "-w", "-t", table, "-D", *parts[1:]], check=False)
        for chain in added:
            run([command, "-w", "-t", table, "-F", chain], check=False)
        for chain in added:
            run([command, "-w", "-t", table, "-X", chain], check=False)


def netns_names() -> set[str]:
    with contextlib.suppress(FileNotFoundError):
        return set(os.listdir("/run/netns"))
    return set()


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(root) or point.startswith(f"{root}/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def ensure_pause_image(node_binaries: NodeBinaries) -> None:
    """The sandbox image, from the kubernetes module's own build/pause/linux/pause.c: static, FROM scratch."""
    if images.image_exists(PAUSE_IMAGE):
        return
    source = node_binaries.kubernetes_module / "build" / "pause" / "linux" / "pause.c"
    if not source.is_file():
        raise StackError("pause image", f"{source} is missing from the kubernetes module")
    work = cache_root() / "build" / "pause"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run(["gcc", "-Os", "-static", "-o", str(work / "pause"), str(source), '-DVERSION="sdtask-local"'])
    run(["strip", str(work / "pause")], check=False)
    (work / "Dockerfile").write_text('FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n')
    images.docker("build", "-q", "-t", PAUSE_IMAGE, str(work))


def remove_cgroups() -> None:
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / CGROUP_ROOT
        if not top.is_dir():
            continue
        nested = [p for p in top.rglob("*") if p.is_dir()]
        for directory in sorted(nested, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
