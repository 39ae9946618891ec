"""promtool (Debian's prometheus package) accepts the alert rules and its unit tests
(tests/deploy/alerts_test.yaml) show each alert firing — and staying quiet — on
synthetic series."""

import os
import shutil
import subprocess

import deploylib as L


def promtool():
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    assert found, "promtool not found (deploy/validate.sh fetches Debian's prometheus package)"
    return found


def run(*args):
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=L.REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_pass_promtool_check():
    out = run("check", "rules", str(L.ALERTS))
    assert f"SUCCESS: {len(L.alert_rules())} rules found" in out


def test_alerts_fire_on_synthetic_series():
    run("test", "rules", "tests/deploy/alerts_test.yaml")


def test_every_alert_has_a_unit_test():
    import yaml

    tests = yaml.safe_load((L.REPO / "tests/deploy/alerts_test.yaml").read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    assert fired == {r["alert"] for r in L.alert_rules()}
