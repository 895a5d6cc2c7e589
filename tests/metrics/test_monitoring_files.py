"""k8s/monitoring: rules pass promtool, the dashboard and PodMonitor are well-formed, and every metric
they reference is one the trainer exports."""

from __future__ import annotations

import json
import re
import subprocess

import yaml
from metric_names import DEVICE_MEMORY, EXPORTED
from training_run import REPO

MONITORING = REPO / "k8s" / "monitoring"

RULES = MONITORING / "partialfc-rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def run_promtool(promtool: str, *args: str) -> None:
    result = subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", RULES.name)


def test_promtool_test_rules(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", "partialfc-rules.test.yaml")


def test_every_alert_has_a_firing_unit_test() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tests = yaml.safe_load((MONITORING / "partialfc-rules.test.yaml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts == fired


def referenced_metrics(text: str) -> set[str]:
    """Exported metric names used in PromQL text (recorded series, which contain ':', excluded)."""
    names = set()
    for name in re.findall(r"(?<![:\w])partialfc_\w+(?![\w:])", text):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.removesuffix(suffix) in EXPORTED:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = EXPORTED | DEVICE_MEMORY
    rules = referenced_metrics(RULES.read_text())
    dashboard = referenced_metrics(DASHBOARD.read_text())
    assert rules and rules <= exported, rules - exported
    assert dashboard and dashboard <= exported, dashboard - exported


def test_dashboard_is_templated_on_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"]), panel["title"]
    exprs = " ".join(target["expr"] for panel in panels for target in panel["targets"])
    for metric in (
        "partialfc_samples_total",
        "partialfc_loss",
        "partialfc_learning_rate",
        "partialfc_step_duration_seconds_bucket",
        "partialfc_data_wait_seconds_total",
        "partialfc_device_memory_allocated_bytes",
        "partialfc_evaluation_score",
    ):
        assert metric in exprs, f"dashboard lacks {metric}"
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_podmonitor_scrapes_named_metrics_port() -> None:
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert [endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/instance"
