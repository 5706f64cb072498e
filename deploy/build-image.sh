#!/usr/bin/env bash
# Build the wsproxy image from the repo's Dockerfile with buildah (no Docker engine:
# vfs storage, chroot isolation), then smoke-test it (deploy/smoke-test.py).
#
#   deploy/build-image.sh                 # build + smoke test
#   deploy/build-image.sh --no-smoke      # build only
#   deploy/build-image.sh --base IMAGE    # build FROM this base instead (pulled if need be,
#                                         # e.g. python:3.11-slim-bookworm)
#   deploy/build-image.sh --rebuild-base  # make the debootstrap'd base again
#
# The base: a Debian bookworm root made with debootstrap (minbase + python3, python3-venv,
# ca-certificates), imported into buildah as localhost/wsproxy-base:bookworm and reused by
# later runs. Its packages come from the Debian mirror this machine's apt already uses
# (deploy/debian_mirror.py reads /etc/apt/sources.list{,.d}), or from DEBIAN_MIRROR.
#
# Environment: IMAGE (default localhost/wsproxy:VERSION), PYTHON (the smoke test's
# interpreter, with the websockets package; default .venv/bin/python), DEBIAN_MIRROR
# (a Debian mirror's URL; default: the machine's own).
# Needs root (buildah's vfs storage and chroot, debootstrap, the smoke test's mounts).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=1 base="" rebuild_base=0
while [ $# -gt 0 ]; do
    case "$1" in
        --no-smoke) smoke=0 ;;
        --base) base="$2"; shift ;;
        --rebuild-base) rebuild_base=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image="${IMAGE:-localhost/wsproxy:$version}"
local_base=localhost/wsproxy-base:bookworm
python="${PYTHON:-.venv/bin/python}"
buildah=(buildah --storage-driver vfs)
t_start=$(date +%s.%N)
elapsed() { printf '%.1f' "$(echo "$(date +%s.%N) - $1" | bc)"; }
say() { echo "build-image: $*"; }

# Tools: Debian's packages, installed when missing.
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v bc >/dev/null || missing+=(bc)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

# ---- the base image -----------------------------------------------------------------
t0=$(date +%s.%N)
if [ -n "$base" ] && ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    say "pulling $base"
    "${buildah[@]}" pull -q "$base" >/dev/null
elif [ -z "$base" ]; then
    if [ "$rebuild_base" = 0 ] && "${buildah[@]}" inspect --type image "$local_base" >/dev/null 2>&1; then
        base=$local_base
        say "base: $base (made earlier with debootstrap)"
    else
        mirror="${DEBIAN_MIRROR:-}"
        [ -n "$mirror" ] || mirror=$(python3 deploy/debian_mirror.py) || exit 1
        say "making $local_base with debootstrap ($mirror)"
        rootfs=$(mktemp -d /tmp/wsproxy-rootfs.XXXXXX)
        trap 'rm -rf "$rootfs"' EXIT
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "$mirror" >/tmp/wsproxy-debootstrap.log 2>&1 \
            || { tail -20 /tmp/wsproxy-debootstrap.log >&2; exit 1; }
        # What a slim base leaves out: package caches and lists, docs, man pages, locales.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
               "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        : > "$rootfs/etc/resolv.conf"
        ctr=$("${buildah[@]}" from scratch)
        mnt=$("${buildah[@]}" mount "$ctr")
        cp -a "$rootfs/." "$mnt/"
        "${buildah[@]}" umount "$ctr" >/dev/null
        "${buildah[@]}" config --env LANG=C.UTF-8 --cmd /bin/bash \
            --label org.opencontainers.image.description="Debian bookworm minbase + python3 (debootstrap)" "$ctr"
        "${buildah[@]}" commit -q --rm "$ctr" "$local_base" >/dev/null
        rm -rf "$rootfs"
        trap - EXIT
        base=$local_base
        say "base: $base made in $(elapsed "$t0")s"
    fi
fi

# ---- the image ----------------------------------------------------------------------
t1=$(date +%s.%N)
# The host's CA bundle is mounted read-only into the RUN steps (never committed), so
# that pip reaches the package index through whatever TLS set-up this machine has.
previous=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)
ca=()
[ -f /etc/ssl/certs/ca-certificates.crt ] \
    && ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
"${buildah[@]}" bud --isolation chroot --layers=false --pull=never "${ca[@]}" \
    --build-arg PYTHON_IMAGE="$base" \
    --build-arg VERSION="$version" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --build-arg SOURCE="$(git remote get-url origin 2>/dev/null || true)" \
    -t "$image" -f Dockerfile . >/tmp/wsproxy-build.log 2>&1 \
    || { tail -30 /tmp/wsproxy-build.log >&2; exit 1; }
# The image this build replaced, now untagged: vfs keeps a full copy of each.
if [ -n "$previous" ] && [ "$previous" != "$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$image")" ]; then
    "${buildah[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
size=$("${buildah[@]}" images --format '{{.Size}}' "$image" | head -1)
say "built $image ($size) in $(elapsed "$t1")s; log: /tmp/wsproxy-build.log"

# What the image promises, read back from its config.
inspect=$(mktemp /tmp/wsproxy-inspect.XXXXXX.json)
"${buildah[@]}" inspect --type image "$image" >"$inspect"
python3 - "$inspect" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))["OCIv1"]["config"]
problems = []
if cfg.get("User") != "10001:10001":
    problems.append(f"User is {cfg.get('User')!r}, not 10001:10001")
if cfg.get("Entrypoint") != ["/opt/wsproxy/bin/wsproxy"]:
    problems.append(f"Entrypoint is {cfg.get('Entrypoint')!r}: not exec-form wsproxy")
if cfg.get("Cmd") != ["run", "-c", "/etc/wsproxy/wsproxy.yaml"]:
    problems.append(f"Cmd is {cfg.get('Cmd')!r}")
if "Healthcheck" in cfg:
    problems.append("the image has a HEALTHCHECK")
if set(cfg.get("ExposedPorts", {})) != {"8080/tcp"}:
    problems.append(f"ExposedPorts is {sorted(cfg.get('ExposedPorts', {}))}")
labels = cfg.get("Labels", {})
for key in ("title", "version", "revision", "created", "licenses"):
    if not labels.get(f"org.opencontainers.image.{key}"):
        problems.append(f"no org.opencontainers.image.{key} label")
for p in problems:
    print(f"build-image: FAIL: {p}")
if problems:
    sys.exit(1)
print("build-image: config ok: User 10001:10001, ENTRYPOINT", cfg["Entrypoint"], "CMD", cfg["Cmd"],
      "EXPOSE 8080, no HEALTHCHECK, OCI labels", labels.get("org.opencontainers.image.version"),
      labels.get("org.opencontainers.image.revision", "")[:12])
PY

if [ "$smoke" = 0 ]; then
    rm -f "$inspect"
    say "done in $(elapsed "$t_start")s (no smoke test)"
    exit 0
fi

# ---- smoke test ---------------------------------------------------------------------
t2=$(date +%s.%N)
ctr=$("${buildah[@]}" from --pull=never -q "$image")
cleanup() {
    "${buildah[@]}" umount "$ctr" >/dev/null 2>&1 || true
    "${buildah[@]}" rm "$ctr" >/dev/null 2>&1 || true
    rm -f "$inspect"
}
trap cleanup EXIT
# buildah run (chroot isolation, host network): the CLI works in the image, and the
# example config passes its check.
"${buildah[@]}" run --isolation chroot "$ctr" -- wsproxy --version
"${buildah[@]}" run --isolation chroot \
    --volume "$PWD/config.example.yaml:/etc/wsproxy/wsproxy.yaml:ro" "$ctr" -- \
    wsproxy check-config -c /etc/wsproxy/wsproxy.yaml
# The proxy itself: PID 1 of its own PID namespace, read-only root, the image's user,
# ENTRYPOINT, CMD and Env (buildah's chroot isolation has no PID namespace, so
# smoke-test.py runs the mounted root with unshare + chroot, as a runtime would).
mnt=$("${buildah[@]}" mount "$ctr")
"$python" -c "import websockets" 2>/dev/null \
    || { say "the smoke test needs $python with websockets (pip install -e '.[test]')"; exit 1; }
"$python" deploy/smoke-test.py --rootfs "$mnt" --image-config "$inspect" \
    --prestop deploy/kubernetes/overlays/sidecar/wsproxy-prestop.sh
say "smoke test in $(elapsed "$t2")s"
say "done in $(elapsed "$t_start")s: $image"
