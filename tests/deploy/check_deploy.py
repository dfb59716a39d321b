#!/usr/bin/env python3
"""Keeps docs/metrics.md, the metrics code and the deploy files in step.

    tests/deploy/check_deploy.py dashboard    # ctest grafana_dashboard_check
    tests/deploy/check_deploy.py prometheus   # ctest prometheus_config_check
    tests/deploy/check_deploy.py containerfile HERD  # ctest containerfile_check

dashboard: the metric table of docs/metrics.md names exactly the metrics that
coordinator/metrics/serving_metrics.cc registers; deploy/grafana/
herd-dashboard.json is a well-formed Grafana dashboard (unique panel ids,
panels inside the 24-column grid, every query on the data source variable);
every documented metric appears in some panel's query, each histogram as p50,
p90 and p99 over its _bucket series; ep_balancedness has a heatmap-style
panel; and every herd: name in the docs and the dashboard is a documented
metric (a typo there would show an empty panel).

prometheus: `promtool check config` passes on deploy/prometheus.yml and
deploy/prometheus-kubernetes.yml. Debian's promtool is built without
Kubernetes service discovery: there the second file is checked with its
kubernetes_sd_configs blocks swapped for static_configs (the rest, relabel
rules included, as written). Exits 77 (ctest's skip) when promtool is not
installed.

containerfile: deploy/Containerfile builds with scripts/setup.sh, runs as a
non-root user, and its runtime stage installs the Debian package of every
library the herd binary HERD links directly (its ELF NEEDED entries; their own
dependencies come with those packages). Libraries outside Debian (a CUDA
toolkit in /usr/local) are skipped: the image is a CPU build.

Run from the repository root (ctest does). Python 3 standard library only.
"""
import json
import re
import shutil
import subprocess
import sys
import tempfile

DOCS = "docs/metrics.md"
CODE = "coordinator/metrics/serving_metrics.cc"
DASHBOARD = "deploy/grafana/herd-dashboard.json"
PROMETHEUS_CONFIG = "deploy/prometheus.yml"
PROMETHEUS_KUBERNETES_CONFIG = "deploy/prometheus-kubernetes.yml"

# A herd: metric name, and the series a histogram or counter adds to it.
NAME = r"herd:[a-zA-Z0-9_]+"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Panel types that draw a gauge per layer over time as coloured cells.
HEATMAP_TYPES = ("heatmap", "status-history", "state-timeline")
QUANTILES = ("0.5", "0.9", "0.99")


def documented_metrics():
    """{name: type} from the rows of the reference table: | `herd:x` | type | ..."""
    metrics = {}
    with open(DOCS) as f:
        for line in f:
            m = re.match(r"\|\s*`(" + NAME + r")`\s*\|\s*(\w+)\s*\|", line)
            if m:
                metrics[m.group(1)] = m.group(2)
    return metrics


def registered_metrics():
    """Names of the metric families the code registers (string literals)."""
    with open(CODE) as f:
        return set(re.findall(r'"(' + NAME + r')"', f.read()))


def base_name(name, metrics):
    """The documented metric `name` is a series of, or None."""
    if name in metrics:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and metrics.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return None


def all_panels(panels):
    """Panels, with the panels of collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def uses_datasource_variable(datasource):
    uid = datasource.get("uid", "") if isinstance(datasource, dict) else datasource
    return uid in ("${datasource}", "$datasource", "${DS_PROMETHEUS}")


def check_dashboard(errors):
    metrics = documented_metrics()
    if not metrics:
        errors.append(f"{DOCS}: no metric table rows found")
        return
    registered = registered_metrics()
    for name in sorted(registered - metrics.keys()):
        errors.append(f"{name} is registered in {CODE} but not in {DOCS}'s table")
    for name in sorted(metrics.keys() - registered):
        errors.append(f"{name} is in {DOCS}'s table but not registered in {CODE}")

    with open(DOCS) as f:
        for name in sorted(set(re.findall(NAME, f.read()))):
            if base_name(name, metrics) is None:
                errors.append(f"{DOCS} mentions {name}, which is no metric")

    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(dashboard.get(key), kind):
            errors.append(f"{DASHBOARD}: '{key}' missing or not a {kind.__name__}")
    if isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] < 36:
        errors.append(f"{DASHBOARD}: schemaVersion {dashboard['schemaVersion']} < 36")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        errors.append(f"{DASHBOARD}: no 'datasource' variable of type datasource")

    exprs = []  # (panel title, panel type, expr)
    ids = set()
    for panel in all_panels(dashboard.get("panels", [])):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            errors.append(f"{DASHBOARD}: panel id {panel.get('id')} used twice")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            errors.append(f"{DASHBOARD}: panel '{title}' has no complete gridPos")
        elif grid["x"] + grid["w"] > 24:
            errors.append(f"{DASHBOARD}: panel '{title}' is wider than the grid")
        if panel.get("type") == "row":
            continue
        if not panel.get("targets"):
            errors.append(f"{DASHBOARD}: panel '{title}' has no queries")
        for target in panel.get("targets", []):
            if not target.get("expr"):
                errors.append(f"{DASHBOARD}: a query of panel '{title}' has no expr")
                continue
            if not uses_datasource_variable(target.get("datasource", panel.get("datasource"))):
                errors.append(f"{DASHBOARD}: a query of '{title}' is not on the datasource variable")
            exprs.append((title, panel.get("type"), target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            exprs.append((annotation.get("name", "?"), "annotation", annotation["expr"]))

    used = set()
    for title, _, expr in exprs:
        for name in re.findall(NAME, expr):
            base = base_name(name, metrics)
            if base is None:
                errors.append(f"{DASHBOARD}: panel '{title}' queries {name}, which is no metric")
            else:
                used.add(base)
    for name in sorted(metrics.keys() - used):
        errors.append(f"{DASHBOARD}: no panel queries {name}")

    for name, kind in sorted(metrics.items()):
        if kind != "histogram":
            continue
        for q in QUANTILES:
            pattern = (r"histogram_quantile\(\s*" + re.escape(q) + r"\s*,.*rate\(\s*"
                       + re.escape(name) + r"_bucket\b.*\[1m\]")
            if not any(re.search(pattern, expr) for _, _, expr in exprs):
                errors.append(f"{DASHBOARD}: no p{int(float(q) * 100)} panel query of {name} "
                              f"(histogram_quantile({q}, ... rate({name}_bucket[1m])))")

    if not any(kind in HEATMAP_TYPES and "herd:ep_balancedness" in expr
               for _, kind, expr in exprs):
        errors.append(f"{DASHBOARD}: no {'/'.join(HEATMAP_TYPES)} panel of herd:ep_balancedness")


def check_prometheus(errors):
    promtool = shutil.which("promtool")
    if promtool is None:
        print("promtool not found (Debian: apt-get install prometheus); skipping")
        sys.exit(77)
    for path in (PROMETHEUS_CONFIG, PROMETHEUS_KUBERNETES_CONFIG):
        result = subprocess.run([promtool, "check", "config", path], capture_output=True,
                                text=True)
        output = result.stdout + result.stderr
        if result.returncode != 0 and "field kubernetes_sd_configs not found" in output:
            print(output, end="")
            print(f"{path}: this promtool has no Kubernetes service discovery; checking the "
                  "file with static_configs in its place")
            with open(path) as f:
                text = f.read()
            # Each `kubernetes_sd_configs:` block (the key and its deeper-indented
            # lines) becomes a static target list at the same indentation.
            text = re.sub(r"^( *)kubernetes_sd_configs:\n(?:\1 .*\n)*",
                          r'\1static_configs:\n\1  - targets: ["herd:8000"]\n', text, flags=re.M)
            with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
                f.write(text)
                f.flush()
                result = subprocess.run([promtool, "check", "config", f.name],
                                        capture_output=True, text=True)
                output = result.stdout + result.stderr
        print(output, end="")
        if result.returncode != 0:
            errors.append(f"promtool check config {path} exited {result.returncode}")


CONTAINERFILE = "deploy/Containerfile"
# Libraries every Debian image has (libc6, libgcc-s1): no package to name.
BASE_LIBRARIES = ("libc.so", "libm.so", "libgcc_s.so", "ld-linux")


def debian_package_of(path):
    """The Debian package that installed the file at `path`, or None."""
    candidates = [path]
    if path.startswith("/lib/"):
        candidates.append("/usr" + path)  # merged /usr: dpkg knows one of the two
    for candidate in candidates:
        result = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.split(":", 1)[0].strip()
    return None


def check_containerfile(errors, herd):
    with open(CONTAINERFILE) as f:
        text = f.read()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    if len(stages) != 2:
        errors.append(f"{CONTAINERFILE}: expected a build stage and a runtime stage")
        return
    build, runtime = stages
    if "scripts/setup.sh" not in build:
        errors.append(f"{CONTAINERFILE}: the build stage must run scripts/setup.sh")
    if not re.search(r"^USER (?!0\b|root\b)\S+", runtime, flags=re.M):
        errors.append(f"{CONTAINERFILE}: the runtime stage must switch to a non-root USER")
    install = re.search(r"apt-get install[^\n]*((?:\n[^\n]*)*?)\n &&", runtime)
    packages = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", install.group(0))) if install else set()
    if shutil.which("readelf") is None or shutil.which("dpkg") is None:
        print("containerfile: readelf or dpkg missing; skipped")
        sys.exit(77)
    dynamic = subprocess.run(["readelf", "-d", herd], capture_output=True, text=True, check=True)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic.stdout)
    resolved = {}
    for line in subprocess.run(["ldd", herd], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>":
            resolved[parts[0]] = parts[2]
    for library in needed:
        if library.startswith(BASE_LIBRARIES):
            continue
        path = resolved.get(library)
        if path is None or path.startswith("/usr/local/"):
            continue  # not from Debian (a CUDA toolkit): not in a CPU image
        package = debian_package_of(path)
        if package is None:
            errors.append(f"{library} ({path}) belongs to no Debian package")
        elif package not in packages:
            errors.append(f"{CONTAINERFILE}: the runtime stage does not install {package}, "
                          f"which provides {library} that herd links")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "containerfile":
        errors = []
        check_containerfile(errors, sys.argv[2])
        for e in errors:
            print(f"FAIL: {e}")
        if errors:
            sys.exit(1)
        print("containerfile: OK")
        return
    if len(sys.argv) != 2 or sys.argv[1] not in ("dashboard", "prometheus"):
        print(__doc__, file=sys.stderr)
        return 2
    errors = []
    (check_dashboard if sys.argv[1] == "dashboard" else check_prometheus)(errors)
    for error in errors:
        print(error, file=sys.stderr)
    if not errors:
        print(f"{sys.argv[1]}: OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
