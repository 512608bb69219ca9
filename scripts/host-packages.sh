#!/usr/bin/env bash
# Installs (once) the Debian packages that `make image` and `make test-containers` need on the host: the Docker engine
# (Debian's docker.io: its client has BuildKit's `RUN --mount` support), debootstrap for the base image when the
# configured one can't be pulled, and containerd, runc, the CNI plugins and iptables for the local real node.
# Needs root (the real node runs containerd and the kubelet as root); does nothing when everything is present.
set -euo pipefail
packages=(docker.io containerd runc containernetworking-plugins debootstrap iptables)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "host-packages: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    echo "host-packages: install them, or set SDTASK_SKIP_CONTAINERS=1 to run make test without the real-container suite" >&2
    exit 1
fi
echo "host-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: docker.io would otherwise pull in a desktop's worth of tools (git, xz-utils, cgroupfs-mount...).
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
