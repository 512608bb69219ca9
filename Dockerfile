# One image for the operator, the agent sidecar of every runtime pod, the stand-in Web UI and the `sdtask` CLI:
#   docker run IMAGE                        the operator (CMD operator)
#   docker run IMAGE agent                  the agent (what the operator puts in runtime pods)
#   docker run IMAGE submit - < body.json   the CLI
#
# Runs as uid/gid 10001 (AGENT_USER_ID in operator/sdtask/deployment.py) with a read-only root filesystem: nothing is
# written outside /tmp (the bytecode is compiled at build time, HOME is /tmp).
#
#   make image        (starts the engine, finds or builds the base, passes the host's CA bundle: devcluster/images.py)
#   DOCKER_BUILDKIT=1 docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#       [--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt] -t sdtask-operator:0.1.0 .
#
# No `# syntax=` line on purpose: the engine's built-in Dockerfile frontend is used, none is fetched from a registry.

# Both stages must use the same base: the virtualenv links to its interpreter. Pin it by digest in CI
# (--build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

# Every dependency ships wheels for CPython 3.11 on manylinux (amd64 and arm64), so no compiler is needed even here.
RUN python -m venv /opt/venv
WORKDIR /src
# README.md* so the build works whether or not the readme pyproject.toml names exists yet.
COPY pyproject.toml README.md* ./
COPY operator/ operator/
# The optional ca-bundle secret is the build host's trust store, for registries behind a TLS-inspecting proxy: mounted
# for this step only, never written to a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/venv/bin/pip install --no-compile . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib \
    && /opt/venv/bin/sdtask --help > /dev/null


FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="sdtask-operator" \
      org.opencontainers.image.description="Kubernetes operator running Stable Diffusion Web UI jobs as SDTask custom resources: operator, agent and CLI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      org.opencontainers.image.vendor="sdtask"

# No build tools here: only an unprivileged user and the virtualenv. The base image's pip, setuptools and wheel go too
# (nothing installs packages at runtime; pip skips, without failing, any of them the base image lacks).
RUN groupadd --system --gid 10001 sdtask \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin sdtask \
    && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# Numeric, so the kubelet can check runAsNonRoot without a runAsUser in the pod spec.
USER 10001:10001
WORKDIR /tmp

# 8080: Prometheus metrics; 8081: kopf liveness endpoint (sdtask operator --liveness).
EXPOSE 8080 8081

ENTRYPOINT ["sdtask"]
CMD ["operator"]
