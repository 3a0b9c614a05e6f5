#!/usr/bin/env python3
"""The invariants of a rendered overlay that schema validation cannot see.

    check_manifests.py END=RENDERED.yaml:GENERATED_HAPROXY.cfg ...

For each end: RENDERED.yaml is `kubectl kustomize overlays/END`,
GENERATED_HAPROXY.cfg what deploy/generate makes for it now. Exits 1 and
names every broken invariant. It first breaks a copy of the first end on
purpose, once per invariant, and fails unless each break is reported: a
check that cannot fail does not count.
"""

import copy
import re
import sys
import tomllib

import yaml

SIDECAR = "lockstep"
HAPROXY = "haproxy"
SIDECAR_UID = 10001


def by_kind(docs, kind):
    return [d for d in docs if d and d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    if len(found) != 1:
        raise AssertionError(f"want one {kind}, found {len(found)}")
    return found[0]


def configmap(docs, prefix):
    """The ConfigMap kustomize generated from `prefix` (name + hash suffix)."""
    found = [
        d for d in by_kind(docs, "ConfigMap")
        if re.fullmatch(re.escape(prefix) + r"-[a-z0-9]{10}", d["metadata"]["name"])
    ]
    if len(found) != 1:
        raise AssertionError(f"want one ConfigMap {prefix}-<hash>, found {len(found)}")
    return found[0]


def container(pod, name):
    for c in pod["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def volume_of(pod, c, path):
    """(volume, mountPath) of the mount in container c holding `path`."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[1]):
                best = (m["name"], mp)
    if best is None:
        return None, None
    vol = next((v for v in pod.get("volumes", []) if v["name"] == best[0]), None)
    return vol, best[1]


def env_value(c, docs, key):
    """A variable of container c: env, else a ConfigMap in envFrom."""
    for e in c.get("env", []):
        if e["name"] == key:
            return e.get("value")
    for ef in c.get("envFrom", []):
        ref = ef.get("configMapRef")
        if not ref:
            continue
        cm = next((d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == ref["name"]), None)
        if cm and key in cm.get("data", {}):
            return cm["data"][key]
    return None


def problems(end, docs, generated_haproxy):
    """Every broken invariant of one rendered end, as sentences."""
    out = []

    def check(ok, message):
        if not ok:
            out.append(f"{end}: {message}")

    try:
        dep = one(docs, "Deployment")
        pod = dep["spec"]["template"]["spec"]
        side = container(pod, SIDECAR)
        hap = container(pod, HAPROXY)
        haproxy_cm = configmap(docs, "haproxy")
        config_cm = configmap(docs, "lockstep")
        configmap(docs, "lockstep-end")
    except (AssertionError, KeyError) as e:
        return [f"{end}: {e}"]

    # Every ConfigMap and Secret a pod refers to: ConfigMaps must be in the
    # rendered output (kustomize rewrote the names with their hash).
    cm_names = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    refs = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
    refs += [ef["configMapRef"]["name"] for c in pod["containers"] for ef in c.get("envFrom", []) if "configMapRef" in ef]
    for r in refs:
        check(r in cm_names, f"the pod refers to ConfigMap {r}, which is not rendered")

    # Two LB replicas per end, each HAProxy + sidecar.
    check(dep["spec"].get("replicas") == 2, f"replicas is {dep['spec'].get('replicas')}, want 2")
    check({c["name"] for c in pod["containers"]} == {SIDECAR, HAPROXY}, "the pod is not exactly HAProxy + lockstep")

    # Pod Security "restricted" for the sidecar (pod-level fields count).
    psc = pod.get("securityContext", {})
    for c in (side, hap):
        sc = c.get("securityContext", {})
        name = c["name"]
        check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot is not true")
        check(sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, f"{name}: runs as root")
        check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false")
        check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: capabilities do not drop ALL")
        check(not sc.get("capabilities", {}).get("add"), f"{name}: adds capabilities")
        check(not sc.get("privileged", False), f"{name}: privileged")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        check(seccomp in ("RuntimeDefault", "Localhost"), f"{name}: seccompProfile is {seccomp}, want RuntimeDefault")
    check(side.get("securityContext", {}).get("runAsUser") == SIDECAR_UID, f"the sidecar does not run as uid {SIDECAR_UID}")

    # The sidecar config and HAProxy's socket: same path, shared volume,
    # group = fsGroup, mode lets the group read and write.
    try:
        config = tomllib.loads(config_cm["data"]["lockstep.toml"])
    except (KeyError, tomllib.TOMLDecodeError) as e:
        return out + [f"{end}: lockstep.toml in the ConfigMap: {e}"]
    cfg = haproxy_cm["data"].get("haproxy.cfg", "")
    sock_path = config.get("lb", {}).get("socket", "/run/haproxy/admin.sock")
    m = re.search(r"^\s*stats socket (\S+) (.*)$", cfg, re.M)
    if not m:
        out.append(f"{end}: haproxy.cfg has no stats socket")
    else:
        path, opts = m.group(1), m.group(2).split()
        check(path == sock_path, f"HAProxy's socket {path} is not the sidecar's lb.socket {sock_path}")
        kv = dict(zip(opts[::2], opts[1::2]))
        mode = int(kv.get("mode", "600"), 8)
        check(mode & 0o060 == 0o060, f"socket mode {mode:o} does not let its group read and write")
        gid = kv.get("gid")
        fs_group = psc.get("fsGroup")
        check(fs_group is not None, "no fsGroup: the containers share no group")
        check(gid is not None and fs_group is not None and int(gid) == fs_group,
              f"socket gid {gid} is not the pod's fsGroup {fs_group}")
        groups = {side.get("securityContext", {}).get("runAsGroup"), fs_group, *psc.get("supplementalGroups", [])}
        check(gid is not None and int(gid) in groups, f"the sidecar is not in the socket's group {gid}")
        hvol, _ = volume_of(pod, hap, sock_path)
        svol, _ = volume_of(pod, side, sock_path)
        check(hvol is not None and svol is not None and hvol["name"] == svol["name"] and "emptyDir" in hvol,
              f"{sock_path} is not on one emptyDir mounted in both containers")
    check("stats socket" in cfg and "level admin" in cfg, "the socket is not `level admin`")

    # The ConfigMap's HAProxy config is the generated one, and HAProxy reads it.
    check(cfg == generated_haproxy, "the ConfigMap's haproxy.cfg differs from what deploy/generate makes")
    hcfg_vol, hcfg_mp = volume_of(pod, hap, "/usr/local/etc/haproxy/haproxy.cfg")
    check(hcfg_vol is not None and hcfg_vol.get("configMap", {}).get("name") == haproxy_cm["metadata"]["name"],
          "HAProxy does not read the haproxy ConfigMap at /usr/local/etc/haproxy")
    check("/usr/local/etc/haproxy/haproxy.cfg" in hap.get("args", []), "HAProxy is not started with the mounted config")
    args = side.get("args", [])
    conf_path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    cvol, cmp_ = volume_of(pod, side, conf_path or "/")
    check(conf_path and cvol is not None and cvol.get("configMap", {}).get("name") == config_cm["metadata"]["name"]
          and conf_path == f"{cmp_}/lockstep.toml", "the sidecar's --config is not the lockstep ConfigMap's lockstep.toml")

    # Health checks go to the sidecar's check listener, on the pod's
    # loopback only (no other pod reaches it; 7401 no longer answers them).
    http_port = int(config.get("http", {}).get("listen", "127.0.0.1:7401").rsplit(":", 1)[1])
    check_listen = config.get("http", {}).get("check_listen")
    check(check_listen is not None and check_listen.rsplit(":", 1)[0] in ("127.0.0.1", "[::1]"),
          f"http.check_listen is {check_listen}: the checks must have a loopback listener of their own")
    check_port = int((check_listen or "127.0.0.1:7401").rsplit(":", 1)[1])
    grpc_port = int(config.get("grpc", {}).get("listen", "127.0.0.1:7400").rsplit(":", 1)[1])
    servers = re.findall(r"^\s*server (\S+) (\S+) check addr (\S+) port (\d+) disabled\s*$", cfg, re.M)
    check(len(servers) == 2, f"haproxy.cfg has {len(servers)} checked, disabled servers, want 2")
    for name, _, addr, port in servers:
        check(addr in ("127.0.0.1", "[::1]") and int(port) == check_port,
              f"server {name}'s check goes to {addr}:{port}, not the sidecar's check listener at loopback:{check_port}")
    ports = {p["name"]: p["containerPort"] for p in side.get("ports", [])}
    check(ports.get("http") == http_port and ports.get("grpc") == grpc_port,
          f"sidecar ports {ports} are not http {http_port} / grpc {grpc_port}")

    # KME probes over https, with CA and client certificate from a Secret.
    probe = config.get("probe", {})
    for setup in ("hot", "warm"):
        url = env_value(side, docs, f"LOCKSTEP_PROBE__{setup.upper()}") or probe.get(setup)
        check(url is not None and url.startswith("https://"), f"the {setup} KME probe is {url}, not https://")
    for key in ("ca", "client_cert", "client_key"):
        path = env_value(side, docs, f"LOCKSTEP_PROBE__{key.upper()}") or probe.get(key)
        vol, _ = volume_of(pod, side, path) if path else (None, None)
        check(vol is not None and "secret" in vol, f"probe.{key} ({path}) is not in a mounted Secret")
    # gRPC mutual TLS: every grpc.tls key set, each file in a mounted Secret.
    for key in ("CA", "CERT", "KEY"):
        path = env_value(side, docs, f"LOCKSTEP_GRPC__TLS__{key}")
        vol, _ = volume_of(pod, side, path) if path else (None, None)
        check(vol is not None and "secret" in vol, f"grpc.tls.{key.lower()} ({path}) is not in a mounted Secret")
    # Secret files are root-owned: the sidecar reads them through fsGroup.
    for v in pod.get("volumes", []):
        if "secret" in v:
            mode = v["secret"].get("defaultMode", 0o644)
            check(mode & 0o040 and not mode & 0o007, f"Secret volume {v['name']} mode {mode:o}: want group-readable, not world")

    # Probes: startup and liveness on /healthz, readiness on /readyz.
    want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe_kind, path in want.items():
        p = side.get(probe_kind, {}).get("httpGet", {})
        check(p.get("path") == path and p.get("port") in ("http", http_port),
              f"sidecar {probe_kind} is {p or 'missing'}, want GET {path} on the http port")

    # JSON logs.
    check(args[-2:] == ["--log-format", "json"] or "--log-format=json" in args or
          ("--log-format" in args and args[args.index("--log-format") + 1] == "json"),
          "the sidecar does not log JSON")

    # Requests, no CPU limit.
    for c in (side, hap):
        res = c.get("resources", {})
        check({"cpu", "memory"} <= set(res.get("requests", {})), f"{c['name']}: no cpu and memory requests")
        check("cpu" not in res.get("limits", {}), f"{c['name']}: has a CPU limit (throttling fences the member)")

    # Spread, PodDisruptionBudget.
    labels = dep["spec"]["template"]["metadata"]["labels"]

    def selects(selector):
        ml = (selector or {}).get("matchLabels")
        return bool(ml) and all(labels.get(k) == v for k, v in ml.items())

    tsc = pod.get("topologySpreadConstraints", [])
    check(any(t.get("topologyKey") == "kubernetes.io/hostname" and t.get("whenUnsatisfiable") == "DoNotSchedule"
              and selects(t.get("labelSelector")) for t in tsc),
          "no hard spread of the pods over nodes")
    pdbs = [p for p in by_kind(docs, "PodDisruptionBudget") if selects(p["spec"].get("selector"))]
    check(any(p["spec"].get("maxUnavailable") == 1 or p["spec"].get("minAvailable") == 1 for p in pdbs),
          "no PodDisruptionBudget keeping one of the two pods")

    # NetworkPolicy: gRPC only from both ends' sidecars and operators,
    # metrics only from the monitoring namespace, the check port from no
    # one else (HAProxy asks over loopback).
    nps = [n for n in by_kind(docs, "NetworkPolicy") if selects(n["spec"].get("podSelector"))]
    if len(nps) != 1:
        out.append(f"{end}: want one NetworkPolicy for the LB pods, found {len(nps)}")
    else:
        spec = nps[0]["spec"]
        check("Ingress" in spec.get("policyTypes", []), "the NetworkPolicy does not restrict ingress")
        named = {"grpc": grpc_port, "http": http_port, "kme": 8443}
        rules = {}
        for rule in spec.get("ingress", []):
            for p in rule.get("ports", [{"port": None}]):
                port = named.get(p.get("port"), p.get("port"))
                rules.setdefault(port, []).append(rule.get("from"))
        check(None not in rules, "an ingress rule opens every port")
        grpc_from = rules.get(grpc_port, [])
        check(grpc_from and all(f for f in grpc_from), "gRPC is open to everyone")
        peers = [p for f in grpc_from if f for p in f]
        text = yaml.safe_dump(peers)
        check("lockstep/end" not in text, "the gRPC rule names one end: the other end's sidecars are shut out")
        check("qkd-1-alice" in text and "qkd-1-bob" in text, "the gRPC rule does not admit both ends' namespaces")
        check("lockstep/operator" in text, "the gRPC rule does not admit operators")
        http_from = rules.get(http_port, [])
        check(len(http_from) == 1 and http_from[0] and all(
            p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring"
            and "podSelector" not in p for p in http_from[0]),
              "the metrics/check port is open beyond the monitoring namespace")
    return out


# Each break is (name, mutation of the first end's docs). Every one must be
# reported, else the check above would not catch it.
def _dep(docs):
    return one(docs, "Deployment")


def _pod(docs):
    return _dep(docs)["spec"]["template"]["spec"]


def _side(docs):
    return container(_pod(docs), SIDECAR)


def _set_cfg(docs, f):
    cm = configmap(docs, "haproxy")
    cm["data"]["haproxy.cfg"] = f(cm["data"]["haproxy.cfg"])


def _np_rule(docs, port):
    return next(r for r in one(docs, "NetworkPolicy")["spec"]["ingress"] if any(p["port"] == port for p in r["ports"]))


BREAKS = [
    ("one replica", lambda d: _dep(d)["spec"].__setitem__("replicas", 1)),
    ("fsGroup differs from the socket's gid", lambda d: _pod(d)["securityContext"].__setitem__("fsGroup", 2000)),
    ("socket mode 600", lambda d: _set_cfg(d, lambda c: c.replace("mode 660", "mode 600"))),
    ("no socket gid", lambda d: _set_cfg(d, lambda c: re.sub(r" gid \d+", "", c))),
    ("hand-edited HAProxy config", lambda d: _set_cfg(d, lambda c: c.replace("timeout connect 1000ms", "timeout connect 2s"))),
    ("KME probe over http", lambda d: configmap(d, "lockstep-end")["data"].__setitem__(
        "LOCKSTEP_PROBE__HOT", "http://10.0.1.10:8443")),
    ("no readiness probe", lambda d: _side(d).pop("readinessProbe")),
    ("liveness on /readyz", lambda d: _side(d)["livenessProbe"]["httpGet"].__setitem__("path", "/readyz")),
    ("no startup probe", lambda d: _side(d).pop("startupProbe")),
    ("privilege escalation", lambda d: _side(d)["securityContext"].__setitem__("allowPrivilegeEscalation", True)),
    ("capabilities kept", lambda d: _side(d)["securityContext"].__setitem__("capabilities", {"drop": ["NET_RAW"]})),
    ("no seccomp", lambda d: (_side(d)["securityContext"].pop("seccompProfile"), _pod(d)["securityContext"].pop("seccompProfile"))),
    ("root sidecar", lambda d: (_side(d)["securityContext"].__setitem__("runAsUser", 0))),
    ("CPU limit", lambda d: _side(d)["resources"].setdefault("limits", {}).__setitem__("cpu", "500m")),
    ("text logs", lambda d: _side(d).__setitem__("args", _side(d)["args"][:-2])),
    ("world-readable Secret", lambda d: next(v for v in _pod(d)["volumes"] if "secret" in v)["secret"].__setitem__("defaultMode", 0o444)),
    ("gRPC TLS key unset", lambda d: configmap(d, "lockstep-grpc-tls")["data"].pop("LOCKSTEP_GRPC__TLS__KEY")),
    ("gRPC open to all", lambda d: _np_rule(d, "grpc").pop("from")),
    ("gRPC from one end only", lambda d: _np_rule(d, "grpc")["from"][0]["podSelector"].__setitem__(
        "matchLabels", {"lockstep/end": "alice"})),
    ("metrics port open to all", lambda d: _np_rule(d, "http").pop("from")),
    ("no PodDisruptionBudget", lambda d: d.remove(one(d, "PodDisruptionBudget"))),
    ("no spread over nodes", lambda d: _pod(d).pop("topologySpreadConstraints")),
    ("socket not shared", lambda d: container(_pod(d), HAPROXY)["volumeMounts"].pop()),
    ("checks reachable from other pods", lambda d: configmap(d, "lockstep")["data"].__setitem__(
        "lockstep.toml", configmap(d, "lockstep")["data"]["lockstep.toml"].replace(
            'check_listen = "127.0.0.1:7403"', 'check_listen = "0.0.0.0:7403"'))),
    ("checks on the metrics port", lambda d: configmap(d, "lockstep")["data"].__setitem__(
        "lockstep.toml", re.sub(r'\ncheck_listen = "[^"]*"', "", configmap(d, "lockstep")["data"]["lockstep.toml"]))),
]


def self_test(end, docs, generated):
    missed = []
    for name, brk in BREAKS:
        broken = copy.deepcopy(docs)
        brk(broken)
        if not problems(end, broken, generated):
            missed.append(name)
    return missed


def main(argv):
    ends = []
    for arg in argv:
        end, _, rest = arg.partition("=")
        rendered, _, generated = rest.partition(":")
        with open(rendered) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        with open(generated) as f:
            ends.append((end, docs, f.read()))
    if not ends:
        print(__doc__, file=sys.stderr)
        return 2
    missed = self_test(*ends[0])
    if missed:
        print("the invariant checks miss these breaks: " + ", ".join(missed), file=sys.stderr)
        return 1
    found = [p for end, docs, gen in ends for p in problems(end, docs, gen)]
    for p in found:
        print(p, file=sys.stderr)
    if found:
        return 1
    print(f"manifest invariants: {len(ends)} ends ok; {len(BREAKS)} deliberate breaks all caught")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
