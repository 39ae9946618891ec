"""The dashboard and the alert rules name only metrics (and labels) that
src/metrics.rs exports, parse as PromQL, and cover what the operators need."""

import json

import pytest
import yaml

import deploylib as L

CATALOGUE = L.exported_metrics()


def check_expr(expr):
    selectors, grouping = L.promql_selectors(expr)
    assert selectors, f"no metric in {expr!r}"
    available = set(L.TARGET_LABELS)
    for name, matched in selectors:
        base = L.histogram_base(name, CATALOGUE)
        assert base in CATALOGUE, f"{name} is not exported by src/metrics.rs"
        labels = CATALOGUE[base] | L.TARGET_LABELS
        if name.endswith("_bucket"):
            labels = labels | {"le"}
        assert matched <= labels, f"{name}: unknown labels {matched - labels}"
        available |= labels
    assert grouping <= available, f"grouping by unknown labels {grouping - available}"
    return {L.histogram_base(n, CATALOGUE) for n, _ in selectors}


def test_catalogue_is_read_from_metrics_rs():
    assert "artefatos_queue_depth" in CATALOGUE
    assert CATALOGUE["artefatos_jobs_finished_total"] >= {"format", "outcome"}
    assert all(name.startswith("artefatos_") for name in CATALOGUE)


@pytest.mark.parametrize("title,expr", L.dashboard_exprs(), ids=lambda v: v if len(v) < 60 else None)
def test_dashboard_queries(title, expr):
    check_expr(L.grafana_to_promql(expr))


def test_dashboard_covers_every_operator_question():
    used = set()
    for _, expr in L.dashboard_exprs():
        used |= check_expr(L.grafana_to_promql(expr))
    missing = set(CATALOGUE) - used
    assert not missing, f"exported but not on the dashboard: {missing}"
    dash = json.loads(L.DASHBOARD.read_text())
    assert dash["uid"] == "artefatos"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ["Request rate by route", "Latency p99 by route", "Jobs finished by outcome",
                   "Stage duration p95", "DLQ depth", "Actor restarts", "Outbox backlog",
                   "Cache hit ratio"]:
        assert wanted in titles


@pytest.mark.parametrize("rule", L.alert_rules(), ids=lambda r: r["alert"])
def test_alert_rules(rule):
    check_expr(rule["expr"])
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"]
    anchor = rule["annotations"]["runbook"].split("#", 1)[1]
    readme = (L.DEPLOY / "README.md").read_text().lower()
    assert f"### {rule['alert'].lower()}" in readme, f"no runbook section for {rule['alert']}"
    assert anchor == rule["alert"].lower()


def test_required_alerts_exist():
    by_metric = {}
    for rule in L.alert_rules():
        for name in check_expr(rule["expr"]):
            by_metric.setdefault(name, []).append(rule)
    for metric in ["artefatos_dlq_depth", "artefatos_queue_depth", "artefatos_jobs_finished_total",
                   "artefatos_actor_restarts_total", "artefatos_outbox_backlog"]:
        assert metric in by_metric, f"no alert on {metric}"
    rising = by_metric["artefatos_queue_depth"][0]
    assert "deriv(" in rising["expr"] and rising["for"] == "10m"
    assert any(r["expr"].strip().endswith("> 0") for r in by_metric["artefatos_dlq_depth"])


def test_alerts_file_is_a_plain_rules_file():
    import jsonschema

    import crd_schemas

    doc = yaml.safe_load(L.ALERTS.read_text())
    assert set(doc) == {"groups"}
    jsonschema.validate(doc["groups"], crd_schemas.RULE_GROUPS)
    names = [r["alert"] for r in L.alert_rules()]
    assert len(names) == len(set(names))
