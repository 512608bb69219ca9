"""Build the project image with the host's Docker engine (`make image`), from a clean clone on these machines.

Standard library only, so `make image` needs no virtualenv. Three traps, each found the hard way (see TESTENV.md):
- the base image (`python:3.11-slim` by default) may be unreachable; then an equivalent one is built from Debian's
  archive with debootstrap and kept in the engine, tagged by its recipe version, so it is built once per machine;
- the preinstalled docker client has no buildx, so `RUN --mount` fails with it: Debian's client with BuildKit on is
  used, and the Dockerfile has no `# syntax=` line (that would fetch a frontend image from a registry);
- registries may be reached through a TLS-inspecting proxy whose CA is only in the host's trust store: the bundle is
  passed as a build secret, so it reaches pip during the build and never a layer of the image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from sdtask.devcluster.binaries import cache_root
from sdtask.devcluster.processes import StackError

DEFAULT_PYTHON_IMAGE = "python:3.11-slim"
DEFAULT_TAG = "sdtask-operator:0.1.0"  # = sdtask.constants.DEFAULT_IMAGE (stdlib only here; a test keeps them equal)
# Bump when the recipe below changes: the tag is the cache key of the debootstrapped base.
LOCAL_BASE_IMAGE = "sdtask-local/python:3.11-bookworm-r1"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR_ENV = "SDTASK_DEBIAN_MIRROR"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What python:3.11-slim offers our Dockerfile: Python 3.11 with venv and pip, CA certificates, useradd.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
ENGINE_START_TIMEOUT = 60.0


def _log(message: str) -> None:
    print(f"[sdtask image] {message}", file=sys.stderr, flush=True)


def docker_client() -> str:
    """Debian's docker client: it drives the engine's BuildKit (RUN --mount, secrets) without buildx."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StackError("docker", "no docker client found; run scripts/host-packages.sh (installs Debian's docker.io)")


def docker(*args: str, check: bool = True, stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    proc = subprocess.run([docker_client(), *args], env=env, capture_output=True, check=False, stdin=stdin)
    if check and proc.returncode != 0:
        detail = "\n".join((proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-20:])
        raise StackError("docker", f"docker {' '.join(args[:2])} failed (exit {proc.returncode}):\n{detail}")
    return proc


def engine_running() -> bool:
    return docker("info", "--format", "{{.ServerVersion}}", check=False).returncode == 0


def ensure_engine() -> None:
    """Start dockerd (left running for later builds and tests) unless an engine already answers."""
    if engine_running():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise StackError("dockerd", "no Docker engine answers and dockerd is not installed (scripts/host-packages.sh)")
    log = cache_root() / "logs" / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    _log(f"starting dockerd (log: {log})")
    with log.open("ab") as out:
        subprocess.Popen(
            [dockerd, "--log-level=warn"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives make: the tests and the next build reuse it
        )
    deadline = time.monotonic() + ENGINE_START_TIMEOUT
    while not engine_running():
        if time.monotonic() > deadline:
            raise StackError("dockerd", f"not answering after {ENGINE_START_TIMEOUT:.0f}s", log)
        time.sleep(0.5)


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def _debian_mirror() -> str:
    return os.environ.get(DEBIAN_MIRROR_ENV, "http://deb.debian.org/debian")


def build_local_base(tag: str = LOCAL_BASE_IMAGE) -> None:
    """A Debian bookworm image with Python 3.11 that behaves like python:3.11-slim for our Dockerfile."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise StackError("debootstrap", "needed to build the base image locally (scripts/host-packages.sh)")
    work = cache_root() / "build"
    work.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="base-rootfs-", dir=work))
    log = cache_root() / "logs" / "debootstrap.log"
    try:
        _log(f"building the base image {tag} from Debian {DEBIAN_SUITE} (once per machine, about 2 minutes)")
        with log.open("w") as out:
            proc = subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    DEBIAN_SUITE,
                    str(rootfs),
                    _debian_mirror(),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0:
            raise StackError("debootstrap", f"exit {proc.returncode}", log)
        # Like the python images: pip usable by root, no PEP 668 marker (the image is ours to install into).
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        wheels = rootfs / "usr/share/python-wheels"
        pip_wheel = next(wheels.glob("pip-*.whl"), None)
        if pip_wheel is None:
            raise StackError("debootstrap", f"no pip wheel in {wheels} (python3-pip-whl missing?)")
        setup = subprocess.run(
            [
                "chroot",
                str(rootfs),
                "python3",
                f"/usr/share/python-wheels/{pip_wheel.name}/pip",
                "install",
                "--no-index",
                "--no-cache-dir",
                "--find-links",
                "/usr/share/python-wheels",
                "pip",
                "setuptools",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if setup.returncode != 0:
            raise StackError("base image", f"installing pip from Debian's wheels failed:\n{setup.stderr[-2000:]}")
        # What no container needs: package lists and caches, documentation, translations.
        for relative in (
            "var/lib/apt/lists",
            "var/cache/apt",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
            "var/log",
        ):
            target = rootfs / relative
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = docker(
            "import",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            'CMD ["python3"]',
            "-",
            tag,
            check=False,
            stdin=tar.stdout,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise StackError("docker", f"importing the base image failed:\n{imported.stderr[-2000:].decode()}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def ensure_base(python_image: str) -> str:
    """The base to build on: the configured image if the engine has it, else the local Debian one.

    No pull is tried: where the registry is unreachable a pull only hangs; elsewhere `docker pull` it first.
    """
    if image_exists(python_image):
        return python_image
    _log(f"{python_image} is not available here; using a base built from Debian's archive instead")
    if not image_exists(LOCAL_BASE_IMAGE):
        build_local_base(LOCAL_BASE_IMAGE)
    return LOCAL_BASE_IMAGE


def build_image(context: Path, tag: str, python_image: str, version: str, revision: str) -> None:
    ensure_engine()
    base = ensure_base(python_image)
    args = [
        "build",
        "--progress=plain",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"VERSION={version}",
        "--build-arg",
        f"REVISION={revision}",
        "-t",
        tag,
    ]
    if HOST_CA_BUNDLE.is_file():
        # A secret, not a COPY: pip trusts a TLS-inspecting proxy during the build, the image never holds its CA.
        args += ["--secret", f"id=ca-bundle,src={HOST_CA_BUNDLE}"]
    log = cache_root() / "logs" / "image-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(
            [docker_client(), *args, str(context)],
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        raise StackError("docker build", f"exit {proc.returncode}", log)


def image_size(tag: str) -> int:
    out = docker("image", "inspect", tag).stdout
    return int(json.loads(out)[0]["Size"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tag", default=os.environ.get("IMAGE", DEFAULT_TAG))
    parser.add_argument("--python-image", default=os.environ.get("PYTHON_IMAGE") or DEFAULT_PYTHON_IMAGE)
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--revision", default="unknown")
    parser.add_argument("--context", type=Path, default=Path.cwd())
    options = parser.parse_args(argv)
    started = time.monotonic()
    try:
        build_image(options.context, options.tag, options.python_image, options.version, options.revision)
    except StackError as error:
        print(f"make image: {error}", file=sys.stderr)
        return 1
    size = image_size(options.tag) / 1e6
    _log(f"built {options.tag} ({size:.0f} MB) in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
