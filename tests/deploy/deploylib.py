"""Shared helpers of the offline deploy/ checks: paths, YAML loading, a kustomize
build (the real one when kubectl or kustomize is installed, a small Python one
otherwise), PromQL metric extraction and the metric catalogue of src/metrics.rs."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_ROOTS = [K8S_BASE] + sorted(p for p in (DEPLOY / "k8s" / "overlays").glob("*") if p.is_dir())
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = K8S_BASE / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "artefatos.json"
METRICS_RS = REPO / "src" / "metrics.rs"
CONFIG_RS = REPO / "src" / "config.rs"

# Labels Prometheus adds to every scraped series (ServiceMonitor target labels).
TARGET_LABELS = {"namespace", "pod", "container", "service", "endpoint", "job", "instance"}
# Series a histogram exports besides its name.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_yaml_docs(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def yaml_and_json_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file()]
    return sorted(files)


# --- kustomize -------------------------------------------------------------------

def kustomize_command() -> list[str] | None:
    """The real kustomize, if this machine has one (kubectl embeds it).
    DEPLOY_KUSTOMIZE=python forces the Python build (to check it where kubectl exists)."""
    if os.environ.get("DEPLOY_KUSTOMIZE") == "python":
        return None
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def kustomize_real(root: Path) -> list[dict]:
    cmd = kustomize_command()
    assert cmd, "no kustomize or kubectl on this machine"
    out = subprocess.run(cmd + [str(root)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d is not None]


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "IngressClass"}


def kustomize_python(root: Path) -> list[dict]:
    """The subset of `kustomize build` this layout uses: resources (files and
    directories), namespace, labels (metadata only), images. Anything else in a
    kustomization.yaml is refused, so the fallback can never silently differ."""
    kfile = root / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    supported = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    unknown = set(k) - supported
    if unknown:
        raise ValueError(f"{kfile}: the Python kustomize fallback does not implement {sorted(unknown)}")
    docs: list[dict] = []
    for res in k.get("resources", []):
        path = (root / res).resolve()
        if path.is_dir():
            docs.extend(kustomize_python(path))
        else:
            if REPO not in path.parents:
                raise ValueError(f"{res}: outside the repository")
            docs.extend(load_yaml_docs(path))
    docs = copy.deepcopy(docs)
    for d in docs:
        if "namespace" in k and d["kind"] not in CLUSTER_SCOPED:
            d["metadata"]["namespace"] = k["namespace"]
        for entry in k.get("labels", []):
            if entry.get("includeSelectors") or entry.get("includeTemplates"):
                raise ValueError("labels with includeSelectors/includeTemplates not implemented")
            d["metadata"].setdefault("labels", {}).update(entry["pairs"])
        for image in k.get("images", []):
            for c in containers(d):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    return docs


def kustomize(root: Path) -> list[dict]:
    return kustomize_real(root) if kustomize_command() else kustomize_python(root)


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    return spec.get("initContainers", []) + spec.get("containers", [])


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


# --- sizes and durations -----------------------------------------------------------

def parse_duration_secs(text: str) -> float:
    """Durations as src/config.rs parses them: 500ms, 30s, 15m, 24h, 7d, bare seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", str(text).strip())
    assert m, f"not a duration: {text!r}"
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def parse_nginx_size(text: str) -> int:
    """nginx sizes: k and m are binary (1024)."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    assert m, f"not an nginx size: {text!r}"
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def config_default(name: str) -> str:
    """The literal default src/config.rs gives a variable (a parse/duration/or call)."""
    text = CONFIG_RS.read_text()
    m = re.search(r'"%s",\s*(.+?)\)\??,?\n' % re.escape(name), text)
    assert m, f"{name} not found in src/config.rs"
    return m.group(1).strip()


def config_variables() -> set[str]:
    """Variables the service reads: named in src/config.rs, or (ARTEFATOS_LOG_FORMAT,
    clap `env`) anywhere else in src/."""
    names = set(re.findall(r'"((?:AWS|S3)_[A-Z0-9_]+|DATABASE_URL|REDIS_URL|AMQP_URL)"',
                           CONFIG_RS.read_text()))
    for path in (REPO / "src").rglob("*.rs"):
        names |= set(re.findall(r"\b(ARTEFATOS_[A-Z0-9_]*[A-Z0-9])\b", path.read_text()))
    return names


# --- metrics ----------------------------------------------------------------------

def exported_metrics() -> dict[str, set[str]]:
    """Metric name -> the labels its doc comment names (`by `route`, ...`)."""
    text = METRICS_RS.read_text()
    out: dict[str, set[str]] = {}
    for m in re.finditer(r'((?:\s*///[^\n]*\n)+)\s*pub const \w+: &str = "(artefatos_[a-z0-9_]+)";', text):
        doc, name = m.group(1), m.group(2)
        labels = set()
        # Labels are the backticked words in the doc; values follow in parentheses
        # (`outcome` (`done`, ...)), so drop anything inside parentheses first.
        stripped = re.sub(r"\([^)]*\)", "", doc)
        labels.update(re.findall(r"`([a-z_]+)`", stripped))
        out[name] = labels
    return out


def histogram_base(name: str, catalogue: dict[str, set[str]]) -> str:
    if name in catalogue:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in catalogue \
                and name[: -len(suffix)].endswith("_seconds"):
            return name[: -len(suffix)]
    return name


GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    # Template variables only appear inside label matchers here.
    return re.sub(r"\$\{?[a-z_]+\}?", "x", expr)


def promql_selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """Parses a PromQL expression; returns its vector selectors (metric name, label
    names matched) and the labels of every by/without/on/ignoring clause."""
    import promql_parser as pp

    selectors: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()

    def visit(node):
        if isinstance(node, pp.VectorSelector):
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            selectors.append((node.name, labels))
        elif isinstance(node, pp.MatrixSelector):
            visit(node.vector_selector)
        elif isinstance(node, pp.AggregateExpr):
            if node.modifier is not None:
                grouping.update(node.modifier.labels)
            visit(node.expr)
            if node.param is not None:
                visit(node.param)
        elif isinstance(node, pp.BinaryExpr):
            if node.modifier is not None and node.modifier.matching is not None:
                grouping.update(node.modifier.matching.labels)
            visit(node.lhs)
            visit(node.rhs)
        elif isinstance(node, pp.Call):
            for arg in node.args:
                visit(arg)
        elif isinstance(node, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
            visit(node.expr)

    visit(pp.parse(expr))
    return selectors, grouping


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def render_prometheus_rule() -> str:
    """k8s/base/prometheusrule.yaml: the rules of deploy/prometheus/alerts.yaml wrapped
    in a PrometheusRule, so the two can never drift."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "artefatos", "labels": {"app.kubernetes.io/name": "artefatos"}},
        "spec": {"groups": groups},
    }
    head = ("# Generated from deploy/prometheus/alerts.yaml by\n"
            "#   python3 tests/deploy/deploylib.py sync-prometheusrule\n"
            "# Edit alerts.yaml, then regenerate; deploy/validate.sh checks they match.\n")
    return head + yaml.safe_dump(rule, sort_keys=False, width=100)


if __name__ == "__main__":
    if sys.argv[1:] == ["sync-prometheusrule"]:
        PROMETHEUS_RULE.write_text(render_prometheus_rule())
        print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")
    else:
        sys.exit("usage: deploylib.py sync-prometheusrule")
