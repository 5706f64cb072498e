# wsproxy container image. Build, run and the Kubernetes manifests: deploy/README.md.
#
#   docker build -t wsproxy .                       # or: deploy/build-image.sh (buildah)
#   docker run --rm -p 8080:8080 -v "$PWD/wsproxy.yaml:/etc/wsproxy/wsproxy.yaml:ro" wsproxy
#
# PID 1 is wsproxy itself (exec-form ENTRYPOINT, no shell, no init): SIGTERM from the
# runtime reaches it directly. wsproxy installs its own SIGTERM/SIGINT handlers (drain,
# then exit 0; a second signal skips the rest of the spread) and SIGHUP (reload), so the
# kernel's "PID 1 ignores signals it has no handler for" rule does not bite, and it
# starts no child processes, so there are no zombies to reap.
#
# No HEALTHCHECK: the orchestrator probes GET /healthz and GET /readyz on the main port.
#
# PYTHON_IMAGE: any Debian-based image with python3 (3.11 or newer) and its venv module.
# deploy/build-image.sh passes a debootstrap'd Debian bookworm with python3-venv (from the
# machine's own Debian mirror) unless told --base IMAGE.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheels of wsproxy and of every dependency --------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The C frame scanner (wsproxy/core/_scan.c) needs a compiler and Python's headers:
# installed here when the base lacks them and its package mirror answers. Without
# them the wheel is built all the same and the image runs the pure-Python scanner
# (`wsproxy --version` says which). The final stage gets the wheels only: no compiler.
# Unpinned: the compiler's version does not reach the image, only what it built does.
# hadolint ignore=DL3008
RUN if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; \
    then headers=""; else headers=python3-dev; fi; \
    if ! command -v cc >/dev/null || [ -n "$headers" ]; then \
        if apt-get update -qq \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                  gcc libc6-dev ${headers:+"$headers"} >/dev/null; then \
            rm -rf /var/lib/apt/lists/*; \
        else \
            echo "wsproxy: no C compiler in the build stage: the image runs the pure-Python scanner"; \
        fi; \
    fi
COPY pyproject.toml setup.py README.md constraints.txt ./
COPY wsproxy ./wsproxy
# wsproxy/static/wsproxy-client.js (the demo page's client) links to clients/js: the
# wheel gets the file itself.
COPY clients/js/wsproxy-client.js ./clients/js/
# A venv of its own: Debian's python3 refuses pip installs outside one (PEP 668).
# constraints.txt (deploy/lock.sh) pins every dependency to the version CI tested; it
# lists the test tools too, which only constrain and are not installed.
RUN python3 -m venv /tmp/venv; \
    if ! /tmp/venv/bin/pip wheel --verbose --wheel-dir /wheels --constraint constraints.txt . \
            >/tmp/wheel.log 2>&1; then \
        cat /tmp/wheel.log; exit 1; \
    fi; \
    if grep "^wsproxy: the C speedups" /tmp/wheel.log; then :; \
    else echo "wsproxy: the C speedups were built (speedups: c)"; fi

# ---- final: the runtime, one venv in /opt/wsproxy, no pip, no compilers ---------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
# The repository's URL, if it has one (deploy/build-image.sh passes `git remote get-url origin`).
ARG SOURCE=""
LABEL org.opencontainers.image.title="wsproxy" \
      org.opencontainers.image.description="WebSocket reverse proxy and connection-management sidecar with graceful draining" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}"

ENV PATH=/opt/wsproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The wheels are bind-mounted from the build stage (RUN --mount: BuildKit, the default
# builder of Docker 23+, or buildah), so none of them stays in a layer.
# Installed offline (--no-index): what the build stage resolved is what runs. The .pyc
# files are compiled here, so a read-only root filesystem costs nothing at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/wsproxy \
 && /opt/wsproxy/bin/pip install --no-index --no-cache-dir --find-links /wheels wsproxy \
 && /opt/wsproxy/bin/pip uninstall --yes pip setuptools \
 && groupadd --gid 10001 wsproxy \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin wsproxy \
 && mkdir -p /etc/wsproxy

# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001

# The main listener (WebSocket upgrades, and GET /healthz and /readyz for probes).
# The admin API listens on 127.0.0.1:9090 inside the container and is not exposed:
# reach it from the same pod (or `kubectl port-forward`), never from outside.
EXPOSE 8080

# The config is a mounted file (a ConfigMap in Kubernetes): /etc/wsproxy/wsproxy.yaml.
ENTRYPOINT ["/opt/wsproxy/bin/wsproxy"]
CMD ["run", "-c", "/etc/wsproxy/wsproxy.yaml"]
