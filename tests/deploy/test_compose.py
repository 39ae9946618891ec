"""deploy/compose.yaml follows the Compose specification and wires the stack:
health-gated start order, two API replicas behind nginx, one worker per format."""

import json
import re

import pytest
import yaml

import deploylib as L

COMPOSE = L.DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def test_matches_the_compose_specification(compose):
    import compose_spec

    # compose_spec does not resolve YAML merge keys (Docker Compose does): hand it the
    # merged document.
    spec = compose_spec.PyCompose.from_json(json.dumps(compose)).to_spec()
    assert set(spec.services) == set(compose["services"])


def test_start_order_is_health_gated(compose):
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
            if cond["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot"
    for name, svc in services.items():
        if svc.get("image") == "artefatos:local" and svc["command"] != ["migrate"]:
            assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
            assert "healthcheck" in svc
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_replicas_workers_and_nginx(compose):
    services = compose["services"]
    apis = sorted(n for n, s in services.items() if s.get("command") == ["api"])
    assert len(apis) == 2
    workers = {s["environment"]["ARTEFATOS_WORKER_FORMATS"]
               for s in services.values() if s.get("command") == ["worker"]}
    assert workers == {"xlsx", "pdf"}
    upstream = (L.DEPLOY / "nginx" / "upstream-compose.conf").read_text()
    servers = re.findall(r"^\s*server\s+([\w.-]+):8080\b", upstream, re.M)
    assert sorted(servers) == apis
    assert set(services["nginx"]["depends_on"]) == set(apis)


def test_stop_grace_exceeds_shutdown_grace(compose):
    env = compose["x-artefatos-env"]
    drain = L.parse_duration_secs(env["ARTEFATOS_SHUTDOWN_GRACE"])
    for name, svc in compose["services"].items():
        if svc.get("command") in (["api"], ["worker"]):
            assert L.parse_duration_secs(svc["stop_grace_period"]) >= drain + 5, name


def test_variables_are_ones_the_service_reads(compose):
    known = L.config_variables()
    used = set(compose["x-artefatos-env"])
    for svc in compose["services"].values():
        if svc.get("image") == "artefatos:local":
            used |= set(svc["environment"])
    assert used - known == set()
    assert compose["x-artefatos-env"]["ARTEFATOS_LISTEN"].startswith("0.0.0.0:")
