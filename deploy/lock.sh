#!/usr/bin/env bash
# Write constraints.txt: the exact version of every package that
# `pip install -e '.[test,bench]'` installs, resolved afresh for this machine's python3
# (bench: matplotlib for bench/drain_wave.py's plot; pinned too, so that .ci/run's
# unpinned check passes in a .venv that has it).
#
#   bash deploy/lock.sh      # after changing a dependency in pyproject.toml, then commit
#
# .ci/run installs with it (PIP_CONSTRAINT) and so does the Dockerfile (-c), so that CI
# and the image get the versions that were tested, whatever was released since. The
# README's own commands do not need it. Takes about a minute (a fresh venv in /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d /tmp/wsproxy-lock.XXXXXX)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
# The current pins must not hold the new resolution back.
env -u PIP_CONSTRAINT "$venv/bin/pip" install -q -e '.[test,bench]'
{
    echo "# Exact versions of what \`pip install -e '.[test,bench]'\` installs, for"
    echo "# $("$venv/bin/python" -c 'import platform, sys; print(f"Python {sys.version_info[0]}.{sys.version_info[1]} on {platform.system()} {platform.machine()}")')."
    echo "# Written by deploy/lock.sh (run it again to refresh); used by .ci/run and the Dockerfile."
    "$venv/bin/pip" freeze --exclude-editable
} >constraints.txt.new
mv constraints.txt.new constraints.txt
echo "lock: constraints.txt has $(grep -cv '^#' constraints.txt) pins"
