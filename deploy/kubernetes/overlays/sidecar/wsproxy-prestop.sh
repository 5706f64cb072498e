#!/bin/sh
# preStop hook of the APP container in a pod where wsproxy runs as a sidecar.
#
# On pod deletion Kubernetes sends SIGTERM at once to every container without a preStop
# hook (wsproxy), and runs this hook in the app container first: the app gets its
# SIGTERM only when this script returns. So the app keeps serving while wsproxy spreads
# its close frames, and the close handshakes (relayed to the app) complete.
#
# 1. POST /drain: starts wsproxy's drain. Idempotent with the SIGTERM that wsproxy gets
#    at the same moment (whichever comes first starts it; the other is a no-op).
# 2. GET /drain?wait=Ns: blocks until wsproxy's last connection has closed (or N s).
#    When wsproxy exits right after its drain, the answer may be cut off: that also
#    means done. The script always exits 0 (a failing preStop only adds an event).
#
# Settings (environment of the app container):
#   WSPROXY_ADMIN        the admin API (default http://127.0.0.1:9090: same pod, loopback)
#   WSPROXY_DRAIN_WAIT   seconds to wait at most (default 35): drain.delay + drain.timeout
#                        + 5, and below terminationGracePeriodSeconds minus the app's
#                        own shutdown time (deploy/check.py checks both)
#   WSPROXY_ADMIN_TOKEN  the admin.token, if one is set
#
# Needs curl, wget (busybox's will do) or python3 in the app image. With none of them,
# or when wsproxy refuses the request (a wrong or missing token: 401), it sleeps
# WSPROXY_DRAIN_WAIT seconds instead: safe, but always that long. When nothing listens
# on the admin port, wsproxy is gone already and the hook returns at once.
admin="${WSPROXY_ADMIN:-http://127.0.0.1:9090}"
wait_s="${WSPROXY_DRAIN_WAIT:-35}"
token="${WSPROXY_ADMIN_TOKEN:-}"
auth=""
[ -n "$token" ] && auth="Authorization: Bearer $token"

log() { echo "wsproxy-prestop: $*" >&2; }

# post: POST /drain. Exit status 0: accepted; 1: nothing listens; 2: refused or failed.
# wait: GET /drain?wait=, printing the answer; a cut-off answer means wsproxy exited.
if command -v curl >/dev/null 2>&1; then
    post() {
        curl -fsS -m 5 -X POST -H "Content-Type: application/json" ${auth:+-H "$auth"} \
            -d '{}' -o /dev/null "$admin/drain"
        case $? in 0) return 0 ;; 7) return 1 ;; *) return 2 ;; esac
    }
    wait_drain() { curl -sS -m "$((wait_s + 5))" ${auth:+-H "$auth"} "$admin/drain?wait=${wait_s}s"; }
elif command -v wget >/dev/null 2>&1; then
    # No -T: busybox 1.35's wget crashes with it. GET /drain?wait= bounds itself, and
    # the grace period bounds the hook.
    post() {
        out=$(wget -q -O /dev/null --header "Content-Type: application/json" \
            ${auth:+--header "$auth"} --post-data '{}' "$admin/drain" 2>&1)
        rc=$?
        [ $rc -eq 0 ] && return 0
        echo "$out" >&2
        # GNU wget: 4 = network failure; busybox wget says "Connection refused".
        case "$rc:$out" in 4:*|*[Rr]efused*) return 1 ;; *) return 2 ;; esac
    }
    wait_drain() { wget -q -O - ${auth:+--header "$auth"} "$admin/drain?wait=${wait_s}s"; }
elif command -v python3 >/dev/null 2>&1; then
    py() {
        python3 - "$@" <<'PY'
import sys, urllib.error, urllib.request
method, url, timeout, auth = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
headers = {"Content-Type": "application/json"}
if auth:
    headers["Authorization"] = auth.split(": ", 1)[1]
request = urllib.request.Request(url, method=method, headers=headers,
                                 data=b"{}" if method == "POST" else None)
try:
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        sys.stdout.write(answer.read().decode())
except urllib.error.HTTPError as exc:
    print(f"{exc.code} {exc.reason}", file=sys.stderr)
    sys.exit(2)
except urllib.error.URLError as exc:
    print(exc.reason, file=sys.stderr)
    sys.exit(1 if isinstance(exc.reason, ConnectionRefusedError) else 2)
except OSError as exc:  # the answer cut off: wsproxy exited
    print(exc, file=sys.stderr)
    sys.exit(2)
PY
    }
    post() { py POST "$admin/drain" 5 "$auth" >/dev/null; }
    wait_drain() { py GET "$admin/drain?wait=${wait_s}s" "$((wait_s + 5))" "$auth"; }
else
    log "no curl, wget or python3: sleeping ${wait_s}s"
    sleep "$wait_s"
    exit 0
fi

post
case $? in
    0) if wait_drain >&2; then echo >&2; else log "wsproxy went away: its drain is done"; fi ;;
    1) log "nothing listens on $admin: wsproxy is gone, nothing to wait for" ;;
    *) log "POST $admin/drain refused or failed (admin token?): sleeping ${wait_s}s"
       sleep "$wait_s" ;;
esac
exit 0
