#!/usr/bin/env python3
"""Renders deploy/k8s/ and checks it, offline (ctest k8s_manifests_check).

    .venv/bin/python tests/deploy/check_k8s.py [--kubectl PATH]

1. Every overlay in deploy/k8s/overlays/ and deploy/k8s/model render with
   `kubectl kustomize`. Exits 77 (ctest's skip) when kubectl is missing.
2. Every rendered object validates, strictly (unknown fields fail), against
   the schemas of Kubernetes KUBERNETES_VERSIONS that kubernetes-validate
   bundles; LeaderWorkerSet and ServiceMonitor against the CRD schemas in
   tests/deploy/k8s-schemas/ (their pod templates against Kubernetes' own
   PodTemplateSpec). Broken copies of rendered objects must be rejected:
   this proves the validator is not a no-op.
3. What Herd relies on, per overlay: the bootstrap env contract of the UCX
   backend (docs/deploy.md#kubernetes), non-root pods with a read-only root
   filesystem and a writable /tmp, the model on a read-only claim, probes on
   /ready and /health of the config's serve.port on rank 0 only, a grace
   period that outlasts the preStop and serve.drain_timeout_s, CPU requests
   equal to engine.threads, NetworkPolicy ports equal to the Services' ports
   and the data-plane env (every port between ranks on GPU overlays, whose
   ranks run `--device cuda --comm nccl`), and the ServiceMonitor, the PodDisruptionBudget and
   the Prometheus annotations pointing at the right pods and port.

Run from the repository root (ctest does), with the .venv scripts/setup.sh
makes (tests/deploy/requirements.txt).
"""
import argparse
import copy
import glob
import json
import os
import shutil
import subprocess
import sys

K8S_DIR = "deploy/k8s"
SCHEMA_DIR = "tests/deploy/k8s-schemas"
# The oldest Kubernetes the manifests target (StatefulSet ordinals are GA in
# 1.31) and the newest kubernetes-validate bundles.
MIN_KUBERNETES = "1.31"
CONFIG_PATH = "/etc/herd/config.yaml"
COMMAND = ["herd", "serve", "--comm", "ucx", "--config", CONFIG_PATH]
# GPU overlays: each rank on its GPU, the experts' rows over NCCL.
GPU_COMMAND = ["herd", "serve", "--comm", "nccl", "--device", "cuda", "--config", CONFIG_PATH]
# A NetworkPolicy rule without ports opens every port.
EVERY_PORT = (1, 65535)
CUSTOM_SCHEMAS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
}
# Time a rank needs after the drain to stop the others and exit.
STOP_MARGIN_S = 5

try:
    import jsonschema
    import referencing
    import yaml
    from kubernetes_validate import utils as kv
except ImportError as e:
    print(f"check_k8s: {e}: run scripts/setup.sh, which installs tests/deploy/requirements.txt "
          "into .venv, and run this with .venv/bin/python", file=sys.stderr)
    sys.exit(1)


class Validator:
    """Validates one object against the schemas of one Kubernetes version."""

    def __init__(self, version):
        self.version = version
        # kubernetes-validate's strict definitions: what our CRD schemas $ref.
        schema_dir = f"kubernetes-json-schema/v{self._bundled(version)}-local-strict"
        definitions = kv.schema_contents(f"{schema_dir}/_definitions.json", version)
        self.registry = referencing.Registry().with_resource(
            definitions["$id"], referencing.Resource.from_contents(definitions))
        self.custom = {}
        for key, name in CUSTOM_SCHEMAS.items():
            with open(os.path.join(SCHEMA_DIR, name)) as f:
                schema = json.load(f)
            jsonschema.Draft202012Validator.check_schema(schema)
            self.custom[key] = jsonschema.Draft202012Validator(schema, registry=self.registry)

    @staticmethod
    def _bundled(version):
        return [v for v in kv.all_versions() if kv.major_minor(v) <= version][-1]

    def errors(self, obj):
        """Messages for everything wrong with obj (none when it is valid)."""
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in self.custom:
            return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                    for e in self.custom[key].iter_errors(obj)]
        try:
            kv.validate(obj, self.version, strict=True)
        except kv.ValidationError as e:
            return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
        except kv.SchemaNotFoundError as e:
            return [e.message]
        return []


def render(kubectl, directory):
    result = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def name_of(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def selects(selector, labels):
    """Whether a matchLabels selector (dict) selects pods with `labels`."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container, name):
    entry = env_of(container).get(name)
    return None if entry is None else entry.get("value")


class Template:
    """One pod template of Herd's ranks."""

    def __init__(self, owner, role, template):
        self.owner = owner  # the workload object
        self.role = role  # "leader" or "worker"
        self.where = f"{name_of(owner)} {role} template"
        self.labels = template.get("metadata", {}).get("labels", {})
        self.annotations = template.get("metadata", {}).get("annotations", {})
        self.spec = template["spec"]
        self.container = next((c for c in self.spec.get("containers", [])
                               if c.get("name") == "herd"), None)


def rank_templates(objects):
    templates = []
    for obj in objects:
        if obj["kind"] == "LeaderWorkerSet":
            lwt = obj["spec"]["leaderWorkerTemplate"]
            templates.append(Template(obj, "leader", lwt.get("leaderTemplate",
                                                             lwt["workerTemplate"])))
            templates.append(Template(obj, "worker", lwt["workerTemplate"]))
        elif obj["kind"] == "StatefulSet":
            role = obj["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            templates.append(Template(obj, role, obj["spec"]["template"]))
    return templates


def port_number(port, container):
    """A port given as a number or as the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def parse_range(text):
    low, _, high = (text or "").partition("-")
    if not (low.isdigit() and high.isdigit() and int(low) <= int(high)):
        return None
    return int(low), int(high)


def check_overlay(overlay, objects, errors):
    """The consistency checks of one rendered overlay; appends to errors."""
    def fail(message):
        errors.append(f"{overlay}: {message}")

    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    config_maps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}

    templates = rank_templates(objects)
    leaders = [t for t in templates if t.role == "leader"]
    workers = [t for t in templates if t.role == "worker"]
    if len(leaders) != 1 or len(workers) != 1:
        fail(f"expected one leader and one worker pod template, got {len(leaders)} and "
             f"{len(workers)}")
        return
    leader = leaders[0]

    config = None
    for t in templates:
        c = t.container
        if c is None:
            fail(f"{t.where}: no container named herd")
            return
        command = c.get("command", []) + c.get("args", [])
        expected = GPU_COMMAND if "gpu" in overlay else COMMAND
        if command[:len(expected)] != expected:
            fail(f"{t.where}: runs {' '.join(command)!r}, not {' '.join(expected)} ...")
        if t.spec.get("enableServiceLinks") is not False:
            fail(f"{t.where}: enableServiceLinks must be false (Service env vars named HERD_*)")

        # Security.
        pod_security = t.spec.get("securityContext", {})
        security = c.get("securityContext", {})
        if not (pod_security.get("runAsNonRoot") or security.get("runAsNonRoot")):
            fail(f"{t.where}: runAsNonRoot is not set")
        if 0 in (pod_security.get("runAsUser"), security.get("runAsUser")):
            fail(f"{t.where}: runs as uid 0")
        if security.get("readOnlyRootFilesystem") is not True:
            fail(f"{t.where}: readOnlyRootFilesystem is not true")
        if security.get("allowPrivilegeEscalation") is not False:
            fail(f"{t.where}: allowPrivilegeEscalation is not false")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            fail(f"{t.where}: capabilities do not drop ALL")

        # Volumes: the config, the model (read-only), /tmp.
        volumes = {v["name"]: v for v in t.spec.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        tmp = volumes.get(mounts.get("/tmp", {}).get("name"), {})
        if "emptyDir" not in tmp:
            fail(f"{t.where}: /tmp is not an emptyDir")
        config_dir = os.path.dirname(CONFIG_PATH)
        config_volume = volumes.get(mounts.get(config_dir, {}).get("name"), {})
        cm_name = config_volume.get("configMap", {}).get("name")
        if cm_name not in config_maps:
            fail(f"{t.where}: {config_dir} is not a rendered ConfigMap (got {cm_name})")
            return
        text = config_maps[cm_name].get("data", {}).get(os.path.basename(CONFIG_PATH))
        this_config = yaml.safe_load(text or "") or {}
        if config is not None and this_config != config:
            fail(f"{t.where}: reads another config than the other ranks")
        config = this_config
        model = config.get("model", "")
        model_mount = next((m for path, m in mounts.items()
                            if model.startswith(path.rstrip("/") + "/")), None)
        if model_mount is None:
            fail(f"{t.where}: no volume holds the model {model!r}")
        else:
            claim = volumes.get(model_mount["name"], {}).get("persistentVolumeClaim")
            if claim is None or claim.get("readOnly") is not True:
                fail(f"{t.where}: the model volume is not a persistentVolumeClaim with readOnly")
            if model_mount.get("readOnly") is not True:
                fail(f"{t.where}: the model is not mounted readOnly")

        # Resources: requests and limits; CPU = the kernel threads.
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    fail(f"{t.where}: no {kind}.{resource}")
        threads = config.get("engine", {}).get("threads")
        cpu = str(resources.get("requests", {}).get("cpu", ""))
        if not (cpu.isdigit() and int(cpu) == threads):
            fail(f"{t.where}: CPU request {cpu!r} is not engine.threads ({threads})")
        gpus = resources.get("limits", {}).get("nvidia.com/gpu")
        if ("gpu" in overlay) != (gpus is not None):
            fail(f"{t.where}: nvidia.com/gpu limit {gpus} in overlay {overlay}")

    serve = config.get("serve", {})
    api_port = serve.get("port", 8000)
    drain_s = serve.get("drain_timeout_s", 30)
    if serve.get("host") not in ("0.0.0.0", "::"):
        fail(f"serve.host is {serve.get('host')!r}: the Service cannot reach it")

    # Probes: rank 0 serves HTTP; the others have no server to probe.
    c = leader.container
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health"),
                        ("startupProbe", "/health")):
        get = c.get(probe, {}).get("httpGet", {})
        if probe != "startupProbe" or probe in c:
            if get.get("path") != path or port_number(get.get("port"), c) != api_port:
                fail(f"{leader.where}: {probe} is not GET {path} on port {api_port}")
    for t in workers:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if "httpGet" in t.container.get(probe, {}):
                fail(f"{t.where}: {probe} over HTTP, but only rank 0 serves HTTP")
    if port_number("http", c) != api_port:
        fail(f"{leader.where}: container port http is not serve.port {api_port}")
    expected_annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(api_port),
                            "prometheus.io/path": "/metrics"}
    for key, value in expected_annotations.items():
        if leader.annotations.get(key) != value:
            fail(f"{leader.where}: annotation {key} is {leader.annotations.get(key)!r}, "
                 f"not {value!r}")

    # Drain: the grace period covers the preStop and the drain, on every rank
    # (workers leave after rank 0's drain).
    pre_stop = c.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        fail(f"{leader.where}: no preStop hook")
        pre_stop_s = 0
    elif "sleep" in pre_stop:
        pre_stop_s = pre_stop["sleep"]["seconds"]
    else:
        command = pre_stop.get("exec", {}).get("command", [])
        pre_stop_s = int(command[1]) if len(command) == 2 and command[0].endswith("sleep") else 0
        if pre_stop_s == 0:
            fail(f"{leader.where}: preStop is not a sleep ({command})")
    for t in templates:
        grace = t.spec.get("terminationGracePeriodSeconds", 30)
        if grace < pre_stop_s + drain_s + STOP_MARGIN_S:
            fail(f"{t.where}: terminationGracePeriodSeconds {grace} < preStop {pre_stop_s} s + "
                 f"serve.drain_timeout_s {drain_s} s + {STOP_MARGIN_S} s")

    # The bootstrap env contract (the UCX backend reads it).
    bootstrap_ports, ucx_ranges = set(), set()
    for t in templates:
        port = env_value(t.container, "HERD_LEADER_PORT") or "29500"
        if not port.isdigit():
            fail(f"{t.where}: HERD_LEADER_PORT {port!r} is not a port")
            return
        bootstrap_ports.add(int(port))
        ucx = parse_range(env_value(t.container, "UCX_TCP_PORT_RANGE"))
        if ucx is None:
            fail(f"{t.where}: UCX_TCP_PORT_RANGE is not set to LOW-HIGH")
        ucx_ranges.add(ucx)
        if "HERD_RANK" in env_of(t.container):
            fail(f"{t.where}: HERD_RANK is set: every pod of the template would be that rank")
    if len(bootstrap_ports) != 1 or len(ucx_ranges) != 1:
        fail(f"ranks disagree on HERD_LEADER_PORT {bootstrap_ports} or UCX_TCP_PORT_RANGE")
        return
    bootstrap_port, ucx_range = bootstrap_ports.pop(), ucx_ranges.pop()

    headless = [s for s in by_kind.get("Service", []) if s["spec"].get("clusterIP") == "None"]
    if leader.owner["kind"] == "LeaderWorkerSet":
        lws = leader.owner
        for t in templates:
            for name in ("HERD_WORLD_SIZE", "HERD_LEADER_ADDRESS"):
                if name in env_of(t.container):
                    fail(f"{t.where}: {name} overrides what the LWS controller injects")
        lwt = lws["spec"]["leaderWorkerTemplate"]
        if not isinstance(lwt.get("size"), int) or lwt["size"] < 1:
            fail(f"{name_of(lws)}: size {lwt.get('size')} is not a rank count >= 1")
        if lws["spec"].get("startupPolicy", "LeaderCreated") != "LeaderCreated":
            fail(f"{name_of(lws)}: the leader is ready only after the workers join: "
                 "startupPolicy must be LeaderCreated")
        if lwt.get("restartPolicy", "RecreateGroupOnPodRestart") != "RecreateGroupOnPodRestart":
            fail(f"{name_of(lws)}: a restarted rank cannot rejoin: restartPolicy must be "
                 "RecreateGroupOnPodRestart")
    else:
        leader_sts, worker_sts = leader.owner, workers[0].owner
        if leader_sts["spec"].get("replicas", 1) != 1:
            fail(f"{name_of(leader_sts)}: replicas must be 1 (one rank 0)")
        if worker_sts["spec"].get("ordinals", {}).get("start") != 1:
            fail(f"{name_of(worker_sts)}: ordinals.start must be 1 (HOSTNAME's -N is the rank)")
        world_size = 1 + worker_sts["spec"].get("replicas", 1)
        if len(headless) != 1:
            fail(f"expected one headless Service, got {len(headless)}")
            return
        service = headless[0]
        if service["spec"].get("publishNotReadyAddresses") is not True:
            fail(f"{name_of(service)}: publishNotReadyAddresses must be true (workers look up "
                 "the leader before it is ready)")
        expected = {"HERD_WORLD_SIZE": str(world_size),
                    "HERD_LEADER_ADDRESS": f"{leader_sts['metadata']['name']}-0."
                                           f"{service['metadata']['name']}"}
        for t in templates:
            if t.owner["spec"].get("serviceName") != service["metadata"]["name"]:
                fail(f"{name_of(t.owner)}: serviceName is not {service['metadata']['name']}")
            if t.owner["spec"].get("updateStrategy", {}).get("type") != "OnDelete":
                fail(f"{name_of(t.owner)}: updateStrategy must be OnDelete (a rolling update "
                     "would mix old and new ranks in the group)")
            if t.owner["spec"].get("podManagementPolicy") != "Parallel":
                fail(f"{name_of(t.owner)}: podManagementPolicy must be Parallel (rank 0 is "
                     "ready only once all ranks run)")
            if not selects(service["spec"].get("selector"), t.labels):
                fail(f"{name_of(service)} does not select the {t.role} pods")
            for name, value in expected.items():
                if env_value(t.container, name) != value:
                    fail(f"{t.where}: {name} is {env_value(t.container, name)!r}, not {value!r}")

    # Services and NetworkPolicies: clients reach the API port of rank 0
    # only; ranks reach each other on the bootstrap port and UCX's range.
    api_services = [s for s in by_kind.get("Service", []) if s not in headless]
    api_ports = set()
    for s in api_services:
        if not selects(s["spec"].get("selector"), leader.labels):
            fail(f"{name_of(s)} does not select the leader pods")
        if any(selects(s["spec"].get("selector"), t.labels) for t in workers):
            fail(f"{name_of(s)} selects workers, which serve no HTTP")
        for p in s["spec"]["ports"]:
            api_ports.add(port_number(p.get("targetPort", p["port"]), leader.container))
    if api_ports != {api_port}:
        fail(f"the API Services' ports {sorted(api_ports, key=str)} are not serve.port {api_port}")
    rank_ports = {bootstrap_port}
    for s in headless:
        rank_ports |= {port_number(p.get("targetPort", p["port"]), leader.container)
                       for p in s["spec"].get("ports", [])}

    policies = by_kind.get("NetworkPolicy", [])
    leader_ports, worker_ports, leader_ranges, worker_ranges = set(), set(), set(), set()
    for policy in policies:
        spec = policy["spec"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        for rule in spec.get("ingress", []):
            from_anyone = not rule.get("from")
            from_ranks = all(selects(peer.get("podSelector", {}).get("matchLabels"), t.labels)
                             for peer in rule.get("from", []) for t in templates)
            ports = ({(p["port"], p.get("endPort", p["port"])) for p in rule["ports"]}
                     if rule.get("ports") else {EVERY_PORT})
            for t in templates:
                if not selects(spec["podSelector"].get("matchLabels"), t.labels):
                    continue
                if from_anyone:
                    (leader_ports if t.role == "leader" else worker_ports).update(
                        ("anyone", p) for p in ports)
                elif from_ranks:
                    (leader_ranges if t.role == "leader" else worker_ranges).update(ports)
                else:
                    fail(f"{name_of(policy)}: a rule from peers that are neither anyone nor "
                         "the ranks")
    client_expected = {("anyone", (p, p)) for p in api_ports}
    if leader_ports != client_expected:
        fail(f"NetworkPolicy ports open to clients on rank 0 {sorted(leader_ports)} are not the "
             f"API Service ports {sorted(api_ports)}")
    if worker_ports:
        fail(f"NetworkPolicy opens {sorted(worker_ports)} on workers to clients")
    # NCCL (GPU overlays) listens on ephemeral ports: every port between ranks.
    ranks_expected = ({EVERY_PORT} if "gpu" in overlay
                      else {(p, p) for p in rank_ports} | {ucx_range})
    for role, got in (("leader", leader_ranges), ("worker", worker_ranges)):
        if got != ranks_expected:
            fail(f"NetworkPolicy ports between ranks on the {role} {sorted(got)} are not "
                 f"{sorted(ranks_expected)} (the bootstrap port and UCX_TCP_PORT_RANGE; every "
                 "port for NCCL's ephemeral ones on GPUs)")

    # Monitoring and disruptions.
    for monitor in by_kind.get("ServiceMonitor", []):
        selector = monitor["spec"]["selector"].get("matchLabels")
        targets = [s for s in by_kind.get("Service", [])
                   if selects(selector, s["metadata"].get("labels", {}))]
        if targets != api_services:
            fail(f"{name_of(monitor)} selects {[name_of(s) for s in targets]}, not the API "
                 "Service")
        for endpoint in monitor["spec"]["endpoints"]:
            names = {p.get("name") for s in targets for p in s["spec"]["ports"]}
            if endpoint.get("port") not in names or endpoint.get("path") != "/metrics":
                fail(f"{name_of(monitor)}: endpoint {endpoint} is not /metrics on an API port")
    if not by_kind.get("ServiceMonitor"):
        fail("no ServiceMonitor")
    budgets = by_kind.get("PodDisruptionBudget", [])
    if len(budgets) != 1 or not all(selects(budgets[0]["spec"]["selector"].get("matchLabels"),
                                            t.labels) for t in templates):
        fail("expected one PodDisruptionBudget selecting every rank")


def broken_copies(objects):
    """(what, object) pairs that every validator must reject."""
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], obj)
    cases = []
    if "StatefulSet" in by_kind:
        sts = copy.deepcopy(by_kind["StatefulSet"])
        sts["spec"]["replicas"] = "two"
        cases.append(("StatefulSet replicas: \"two\"", sts))
        sts = copy.deepcopy(by_kind["StatefulSet"])
        sts["spec"]["template"]["spec"]["containers"][0]["imagee"] = "herd"
        cases.append(("StatefulSet container field imagee", sts))
    if "LeaderWorkerSet" in by_kind:
        lws = copy.deepcopy(by_kind["LeaderWorkerSet"])
        lws["spec"]["replicas"] = "two"
        cases.append(("LeaderWorkerSet replicas: \"two\"", lws))
        lws = copy.deepcopy(by_kind["LeaderWorkerSet"])
        lws["spec"]["leaderWorkerTemplate"]["sizee"] = 2
        cases.append(("LeaderWorkerSet field sizee", lws))
        lws = copy.deepcopy(by_kind["LeaderWorkerSet"])
        lws["spec"]["startupPolicy"] = "LeaderStarted"
        cases.append(("LeaderWorkerSet startupPolicy: LeaderStarted", lws))
        lws = copy.deepcopy(by_kind["LeaderWorkerSet"])
        worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
        worker["ports"] = [{"containerPort": "eight thousand"}]
        cases.append(("LeaderWorkerSet worker containerPort: \"eight thousand\"", lws))
        lws = copy.deepcopy(by_kind["LeaderWorkerSet"])
        del lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]
        cases.append(("LeaderWorkerSet without workerTemplate", lws))
    if "ServiceMonitor" in by_kind:
        monitor = copy.deepcopy(by_kind["ServiceMonitor"])
        del monitor["spec"]["selector"]
        cases.append(("ServiceMonitor without selector", monitor))
        monitor = copy.deepcopy(by_kind["ServiceMonitor"])
        monitor["spec"]["endpoints"][0]["interval"] = "5 seconds"
        cases.append(("ServiceMonitor interval: \"5 seconds\"", monitor))
    if "NetworkPolicy" in by_kind:
        policy = copy.deepcopy(by_kind["NetworkPolicy"])
        policy["spec"]["ingress"][0]["ports"][0]["port"] = [8000]
        cases.append(("NetworkPolicy port: [8000]", policy))
    if "Service" in by_kind:
        service = copy.deepcopy(by_kind["Service"])
        service["spec"]["type"] = 7
        cases.append(("Service type: 7", service))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", default=shutil.which("kubectl"),
                        help="kubectl with kustomize (default: from PATH)")
    args = parser.parse_args()
    if not args.kubectl or not os.access(args.kubectl, os.X_OK):
        print("check_k8s: kubectl not found (it renders the kustomizations); skipping")
        return 77

    versions = [MIN_KUBERNETES, kv.major_minor(kv.latest_version())]
    validators = [Validator(v) for v in versions]
    directories = sorted(glob.glob(os.path.join(K8S_DIR, "overlays", "*"))) + [
        os.path.join(K8S_DIR, "model")]
    errors = []
    num_objects = 0
    for directory in directories:
        try:
            objects = render(args.kubectl, directory)
        except RuntimeError as e:
            errors.append(str(e))
            continue
        for obj in objects:
            num_objects += 1
            for validator in validators:
                for message in validator.errors(obj):
                    errors.append(f"{directory}: {name_of(obj)} against Kubernetes "
                                  f"{validator.version}: {message}")
        for what, broken in broken_copies(objects):
            for validator in validators:
                if not validator.errors(broken):
                    errors.append(f"{directory}: the validator for Kubernetes "
                                  f"{validator.version} accepted a broken object ({what})")
        if os.path.basename(os.path.dirname(directory)) == "overlays":
            check_overlay(os.path.basename(directory), objects, errors)
        print(f"{directory}: {len(objects)} objects: "
              + ", ".join(name_of(o) for o in objects))

    for error in errors:
        print(f"FAIL: {error}", file=sys.stderr)
    if errors:
        return 1
    print(f"check_k8s: {len(directories)} kustomizations, {num_objects} objects valid against "
          f"Kubernetes {' and '.join(versions)}; broken copies rejected; consistency checks "
          "passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
