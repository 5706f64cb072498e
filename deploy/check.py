"""Checks of the deployment files (deploy/check.sh runs it; so can .ci/run).

* ``kubectl kustomize`` renders the base and every overlay, and ``kubernetes-validate
  --strict`` accepts every rendered object, for each Kubernetes version given;
* THE RULE, in every rendered pod that runs wsproxy: terminationGracePeriodSeconds >=
  drain.delay + drain.timeout + 5 s (+ the app's shutdown time, the pod annotation
  ``wsproxy/app-stop-seconds``, in a sidecar pod), drain.* read from the ConfigMap
  mounted at /etc/wsproxy; the same for TimeoutStopSec in deploy/systemd/;
* the termination sequence of deploy/README.md: no preStop hook on wsproxy; in a
  sidecar pod, the app's preStop hook waits on wsproxy's drain long enough and leaves
  the app its shutdown time; backends found by DNS discovery outlive their drain;
* probes on the main listener (/readyz, /healthz), the admin port not exposed, the
  security context, resources, a PodDisruptionBudget and a Service for every workload,
  no replica count under an HPA, an HPA that scales in slower than one drain;
* ``wsproxy check-config`` accepts every config;
* hadolint on the Dockerfile, ``systemd-analyze verify`` on the unit, ``sh -n`` and
  shellcheck on the shell scripts (each where the tool is there).

Exit status 0 when nothing failed. Usage:
    python deploy/check.py [--hadolint PATH] [--kubernetes-validate PATH] [--k8s 1.30.0 ...]
"""
# ruff: noqa: T201

from __future__ import annotations

import argparse
import ipaddress
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from wsproxy.config import DrainConfig
from wsproxy.units import parse_duration

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZATIONS = ["deploy/kubernetes/base", "deploy/kubernetes/overlays/sidecar",
                  "deploy/kubernetes/overlays/gateway"]
CONFIG_PATH = "/etc/wsproxy/wsproxy.yaml"
MARGIN = 5.0  # seconds for the last closing handshakes and the exit
DNS_TTL = 5.0  # CoreDNS's default TTL for a headless Service's records
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
Doc = dict[str, Any]


class Report:
    def __init__(self) -> None:
        self.counts = {"ok": 0, "warn": 0, "FAIL": 0}

    def line(self, kind: str, where: str, message: str) -> None:
        self.counts[kind] += 1
        print(f"deploy-check: {kind:<7} {where}: {message}", flush=True)

    def check(self, ok: bool, where: str, message: str, *, warn: bool = False) -> bool:
        self.line("ok" if ok else "warn" if warn else "FAIL", where, message)
        return ok


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False, **kw)


# Kubernetes --------------------------------------------------------------------------


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def seconds(value: Any, default: float) -> float:
    return default if value is None else parse_duration(value)


class WsproxyConfig:
    """What the checks need of one wsproxy.yaml."""

    def __init__(self, text: str) -> None:
        raw = yaml.safe_load(text) or {}
        defaults = DrainConfig()
        drain = raw.get("drain") or {}
        self.delay = seconds(drain.get("delay"), defaults.delay)
        self.timeout = seconds(drain.get("timeout"), defaults.timeout)
        self.spread = seconds(drain.get("spread"), defaults.spread)
        listen = raw.get("listen") or {}
        self.port = int(listen.get("port", 8080))
        self.tls = bool(listen.get("tls"))
        admin = raw.get("admin") or {}
        self.admin_host = str(admin.get("host", "127.0.0.1"))
        self.admin_port = int(admin.get("port", 9090))
        self.admin_token = admin.get("token")
        self.dns: Doc | None = ((raw.get("discovery") or {}).get("dns")) or None

    @property
    def drain_s(self) -> float:
        return self.delay + self.timeout

    def admin_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.admin_host).is_loopback
        except ValueError:
            return self.admin_host == "localhost"


def check_config_text(report: Report, where: str, text: str) -> None:
    """``wsproxy check-config`` on *text* (this repo's wsproxy)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(text)
        file.flush()
        result = run([sys.executable, "-m", "wsproxy", "check-config", "-c", file.name])
    lines = [ln.replace(file.name, "wsproxy.yaml") for ln in result.stderr.splitlines() if ln]
    if result.returncode == 0:
        report.line("ok", where, "wsproxy check-config accepts it")
    else:
        report.line("FAIL", where, "wsproxy check-config: "
                    + "; ".join(lines or [result.stdout.strip()]))


def port_number(container: Doc, port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def is_wsproxy(container: Doc) -> bool:
    image = str(container.get("image", "")).rsplit("/", 1)[-1].split(":")[0].split("@")[0]
    if container.get("name") == "wsproxy":
        return True
    return image == "wsproxy" and not container.get("command")


def prestop_seconds(container: Doc) -> tuple[str, float | None]:
    """(kind, seconds the hook keeps the container up at most) of its preStop hook."""
    hook = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if not hook:
        return "none", None
    if "sleep" in hook:
        return "sleep", float(hook["sleep"]["seconds"])
    command = " ".join((hook.get("exec") or {}).get("command") or [])
    if "wsproxy-prestop.sh" in command:
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        return "drain-wait", float(env.get("WSPROXY_DRAIN_WAIT") or 35)
    match = re.search(r"\bsleep\s+(\d+)", command)
    if match:
        return "sleep", float(match.group(1))
    return "other", None


def check_container_basics(report: Report, where: str, pod: Doc, c: Doc) -> None:
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
    drops = [str(x).upper() for x in ((csc.get("capabilities") or {}).get("drop") or [])]
    report.check(
        non_root and csc.get("allowPrivilegeEscalation") is False
        and csc.get("readOnlyRootFilesystem") is True and "ALL" in drops
        and not csc.get("privileged"),
        where, "securityContext: runAsNonRoot, allowPrivilegeEscalation false, "
               "readOnlyRootFilesystem, capabilities drop ALL")
    res = c.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    report.check({"cpu", "memory"} <= set(requests) and "memory" in limits,
                 where, "resources: cpu and memory requests, a memory limit")


def check_probe(report: Report, where: str, c: Doc, kind: str, path: str,
                cfg: WsproxyConfig) -> None:
    probe = (c.get(kind) or {}).get("httpGet") or {}
    port = port_number(c, probe.get("port"))
    scheme_ok = (probe.get("scheme", "HTTP") == "HTTPS") == cfg.tls
    report.check(
        probe.get("path") == path and port == cfg.port and scheme_ok, where,
        f"{kind}: GET {path} on the main listener (port {cfg.port}"
        f"{', HTTPS' if cfg.tls else ''}), not on the loopback admin port"
        + ("" if probe else f" (no httpGet {kind})"))


def check_workload(report: Report, doc: Doc, docs: list[Doc], where: str) -> None:
    template = doc["spec"]["template"]
    pod = template["spec"]
    labels = (template.get("metadata") or {}).get("labels") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    containers = pod.get("containers") or []
    for c in containers:
        check_container_basics(report, f"{where} container {c['name']}", pod, c)
    report.check(pod.get("automountServiceAccountToken") is False, where,
                 "automountServiceAccountToken: false (wsproxy needs no API access)", warn=True)
    kind_name = (doc["kind"], doc["metadata"]["name"])
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"
            and selects((d["spec"].get("selector") or {}).get("matchLabels"), labels)]
    report.check(bool(pdbs), where, "a PodDisruptionBudget covers its pods")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
            and (d["spec"]["scaleTargetRef"]["kind"],
                 d["spec"]["scaleTargetRef"]["name"]) == kind_name]

    ws = [c for c in containers if is_wsproxy(c)]
    if not ws:
        return
    proxy = ws[0]
    mounts = {m["mountPath"]: m["name"] for m in proxy.get("volumeMounts") or []}
    volume_name = mounts.get("/etc/wsproxy") or mounts.get(CONFIG_PATH)
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    cm_name = ((volumes.get(volume_name) or {}).get("configMap") or {}).get("name")
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name]
    if not report.check(bool(cms) and "wsproxy.yaml" in (cms[0].get("data") or {}), where,
                        f"the config is a ConfigMap ({cm_name}) mounted at /etc/wsproxy"):
        return
    text = cms[0]["data"]["wsproxy.yaml"]
    check_config_text(report, f"{where} ConfigMap {cm_name}", text)
    cfg = WsproxyConfig(text)

    # THE RULE.
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    others = [c for c in containers if c is not proxy]
    app_stop = float(annotations.get("wsproxy/app-stop-seconds", 0))
    if others and not app_stop:
        report.line("warn", where, "a sidecar pod without the annotation "
                    "wsproxy/app-stop-seconds: the app's shutdown time is taken as 0 s")
    need = cfg.drain_s + app_stop + MARGIN
    report.check(
        grace >= need, where,
        f"terminationGracePeriodSeconds {grace:g} >= drain.delay {cfg.delay:g} + drain.timeout "
        f"{cfg.timeout:g}{f' + app stop {app_stop:g}' if app_stop else ''} + {MARGIN:g} = {need:g}")

    # The termination sequence.
    kind, _ = prestop_seconds(proxy)
    report.check(kind == "none", where,
                 "no preStop hook on wsproxy: SIGTERM at t=0 turns /readyz 503 at once, "
                 "drain.delay covers the endpoint propagation")
    for app in others:
        kind, hold = prestop_seconds(app)
        aw = f"{where} container {app['name']}"
        if kind == "drain-wait":
            assert hold is not None
            report.check(hold >= cfg.drain_s, aw,
                         f"preStop waits on the drain up to WSPROXY_DRAIN_WAIT={hold:g} >= "
                         f"drain.delay + drain.timeout = {cfg.drain_s:g}")
            report.check(hold + app_stop <= grace, aw,
                         f"WSPROXY_DRAIN_WAIT {hold:g} + app stop {app_stop:g} <= grace {grace:g}")
        elif kind == "sleep":
            assert hold is not None
            report.check(cfg.drain_s <= hold and hold + app_stop <= grace, aw,
                         f"preStop sleeps {hold:g} s: >= drain.delay + drain.timeout "
                         f"{cfg.drain_s:g}, and + app stop <= grace {grace:g}")
        else:
            report.line("FAIL", aw, f"preStop hook: {kind}: the app gets SIGTERM at t=0 while "
                        "wsproxy still relays its connections (use wsproxy-prestop.sh)")

    # Probes, ports, exposure.
    check_probe(report, f"{where} container wsproxy", proxy, "readinessProbe", "/readyz", cfg)
    check_probe(report, f"{where} container wsproxy", proxy, "livenessProbe", "/healthz", cfg)
    exposed = {int(p["containerPort"]) for p in proxy.get("ports") or []}
    report.check(cfg.port in exposed and cfg.admin_port not in exposed, where,
                 f"containerPorts list the main port {cfg.port}, not the admin port")
    report.check(cfg.admin_loopback() or bool(cfg.admin_token), where,
                 f"admin.host {cfg.admin_host}: loopback (or a token)")
    services = [d for d in docs if d["kind"] == "Service"
                and selects(d["spec"].get("selector"), labels)]
    ok = bool(services)
    for svc in services:
        for sp in svc["spec"].get("ports") or []:
            target = port_number(proxy, sp.get("targetPort", sp.get("port")))
            ok = ok and target == cfg.port
    report.check(ok, where, f"its Services send traffic to wsproxy's port {cfg.port} only")

    # Scaling.
    if hpas:
        report.check("replicas" not in doc["spec"], where,
                     "no spec.replicas under an HPA (apply would reset the count)")
        for hpa in hpas:
            scale_down = (hpa["spec"].get("behavior") or {}).get("scaleDown") or {}
            policies: list[Doc] = scale_down.get("policies") or []
            paced = bool(policies) and all(
                p["periodSeconds"] >= cfg.drain_s and (p["type"] != "Pods" or p["value"] <= 1)
                for p in policies)
            report.check(paced, f"{where} HorizontalPodAutoscaler {hpa['metadata']['name']}",
                         f"scaleDown: at most one pod per period >= one drain ({cfg.drain_s:g} s)")

    # Backends found by DNS discovery.
    if cfg.dns:
        check_dns_backends(report, where, cfg, cfg.dns, docs)


def check_dns_backends(report: Report, where: str, cfg: WsproxyConfig, dns: Doc,
                       docs: list[Doc]) -> None:
    name = str(dns["name"]).split(".")[0]
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
    if not report.check(bool(services) and services[0]["spec"].get("clusterIP") == "None",
                        where, f"discovery.dns names a headless Service in the overlay ({name})"):
        return
    selector = services[0]["spec"].get("selector")
    interval = seconds(dns.get("interval"), 5.0)
    need = DNS_TTL + interval + cfg.timeout
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        template = doc["spec"]["template"]
        if not selects(selector, (template.get("metadata") or {}).get("labels") or {}):
            continue
        pod = template["spec"]
        grace = float(pod.get("terminationGracePeriodSeconds", 30))
        for c in pod["containers"]:
            kind, hold = prestop_seconds(c)
            report.check(
                hold is not None and hold >= need and grace >= hold + MARGIN,
                f"{where} -> {doc['kind']} {doc['metadata']['name']} container {c['name']}",
                f"a backend keeps serving after its deletion (preStop {kind} {hold}) >= DNS TTL "
                f"{DNS_TTL:g} + discovery interval {interval:g} + drain.timeout {cfg.timeout:g} "
                f"= {need:g}, and grace {grace:g} >= that + {MARGIN:g}")


def check_kustomization(report: Report, rel: str, args: argparse.Namespace, out: Path) -> None:
    result = run([args.kubectl, "kustomize", rel])
    if not report.check(result.returncode == 0, rel, "kubectl kustomize renders it"
                        + ("" if result.returncode == 0 else ": " + result.stderr.strip())):
        return
    rendered = out / (rel.replace("/", "_") + ".yaml")
    rendered.write_text(result.stdout)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    report.line("ok", rel, f"{len(docs)} objects: {', '.join(kinds)}")
    if args.kubernetes_validate:
        for version in args.k8s:
            v = run([args.kubernetes_validate, "--strict", "--quiet", "-k", version, str(rendered)])
            report.check(v.returncode == 0, rel,
                         f"kubernetes-validate --strict -k {version} accepts every object"
                         + ("" if v.returncode == 0 else ": " + (v.stdout + v.stderr).strip()))
    else:
        report.line("warn", rel, "kubernetes-validate not given: schemas not checked")
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            check_workload(report, doc, docs, f"{rel} {doc['kind']} {doc['metadata']['name']}")


# systemd -----------------------------------------------------------------------------


def unit_entries(path: Path) -> Iterator[tuple[str, str, str]]:
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, _, value = line.partition("=")
            yield section, key.strip(), value.strip()


def systemd_seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def check_systemd(report: Report) -> None:
    unit = ROOT / "deploy/systemd/wsproxy.service"
    where = "deploy/systemd/wsproxy.service"
    entries = list(unit_entries(unit))
    svc = {}
    reloads = []
    for section, key, value in entries:
        if section == "Service":
            svc[key] = value
            if key == "ExecReload":
                reloads.append(value)
    example = ROOT / "deploy/systemd/wsproxy.yaml"
    check_config_text(report, "deploy/systemd/wsproxy.yaml", example.read_text())
    cfg = WsproxyConfig(example.read_text())
    stop = systemd_seconds(svc.get("TimeoutStopSec", "90s"))
    need = cfg.drain_s + MARGIN
    report.check(stop >= need, where,
                 f"TimeoutStopSec {stop:g} >= drain.delay {cfg.delay:g} + drain.timeout "
                 f"{cfg.timeout:g} + {MARGIN:g} = {need:g} (deploy/systemd/wsproxy.yaml)")
    report.check(svc.get("KillSignal") == "SIGTERM" and svc.get("KillMode") in ("mixed", None),
                 where, "KillSignal=SIGTERM to wsproxy itself")
    report.check(any(re.search(r"kill -HUP \$MAINPID", r) for r in reloads), where,
                 "ExecReload sends SIGHUP")
    report.check(f"run -c {CONFIG_PATH}" in svc.get("ExecStart", ""), where,
                 f"ExecStart runs wsproxy with {CONFIG_PATH}")
    if shutil.which("systemd-analyze"):
        result = run(["systemd-analyze", "verify", str(unit)])
        # The venv is not installed on this machine: that one complaint is expected.
        problems = [ln for ln in (result.stdout + result.stderr).splitlines()
                    if ln.strip() and "is not executable" not in ln]
        report.check(not problems, where, "systemd-analyze verify: "
                     + ("no problems" if not problems else "; ".join(problems)))


# The rest ----------------------------------------------------------------------------


def check_scripts(report: Report, hadolint: str | None) -> None:
    if hadolint:
        result = run([hadolint, "--no-color", "Dockerfile"])
        report.check(result.returncode == 0, "Dockerfile",
                     "hadolint: " + ((result.stdout + result.stderr).strip() or "no findings"))
    else:
        report.line("warn", "Dockerfile", "hadolint not given: not linted")
    for script, shell in (("deploy/kubernetes/overlays/sidecar/wsproxy-prestop.sh", "sh"),
                          ("deploy/build-image.sh", "bash"), ("deploy/check.sh", "bash")):
        result = run([shell, "-n", script])
        report.check(result.returncode == 0, script, f"{shell} -n: parses"
                     + ("" if result.returncode == 0 else ": " + result.stderr.strip()))
        if shutil.which("shellcheck"):
            result = run(["shellcheck", "-s", shell, script])
            report.check(result.returncode == 0, script, "shellcheck: "
                         + (result.stdout.strip() or "no findings"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--kubernetes-validate", metavar="PATH")
    parser.add_argument("--hadolint", metavar="PATH")
    parser.add_argument("--k8s", nargs="+", default=["1.30.0", "1.37.0"], metavar="VERSION",
                        help="Kubernetes versions to validate against (1.30.0 1.37.0)")
    args = parser.parse_args()
    report = Report()
    if shutil.which(args.kubectl) is None:
        report.line("FAIL", "kubectl", "not found: the overlays cannot be rendered")
    else:
        with tempfile.TemporaryDirectory(prefix="wsproxy-deploy-check-") as out:
            for rel in KUSTOMIZATIONS:
                check_kustomization(report, rel, args, Path(out))
    check_systemd(report)
    check_scripts(report, args.hadolint)
    c = report.counts
    verdict = "FAILED" if c["FAIL"] else "all ok"
    print(f"deploy-check: {verdict}: {c['ok']} ok, {c['FAIL']} failing, {c['warn']} warnings",
          flush=True)
    return 1 if c["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
