"""The deployment files: compose validates, alert rules pass their promtool tests, the dashboard
and the rules only use metrics the worker really exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from debian_tools import require

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True
                                 ).returncode == 0:
        return [docker, "compose"]
    return [require("docker-compose", "docker-compose")]


def test_docker_compose_config_validates_with_every_service():
    cmd = compose_command() + ["-f", str(ROOT / "docker-compose.yml")]
    check = subprocess.run(cmd + ["config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stderr
    services = subprocess.run(cmd + ["--profile", "demo", "config", "--services"],
                              capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert set(services.split()) == {"kafka", "kafka-init", "worker-1", "worker-2", "simulator",
                                     "notifier", "board", "prometheus", "alertmanager",
                                     "grafana"}
    resolved = yaml.safe_load(subprocess.run(cmd + ["config"], capture_output=True, text=True,
                                             cwd=ROOT, check=True).stdout)
    assert resolved["services"]["simulator"]["profiles"] == ["demo"]  # only with --profile demo
    for name in ("worker-1", "worker-2"):
        service = resolved["services"][name]
        assert service["command"][0] == "worker"
        assert service["environment"]["CLSMON_PARTITIONS"] == "6"  # = kafka-init's partitions
    assert "--partitions 6" in " ".join(resolved["services"]["kafka-init"]["command"])
    notifier, board = resolved["services"]["notifier"], resolved["services"]["board"]
    assert notifier["command"][0] == "notify" and board["command"][0] == "board"
    assert "--web-port" in notifier["command"] and "6067" in notifier["command"]
    assert board["environment"]["CLSMON_BOARD_METRICS_PORT"] == "6068"
    # metrics listen inside the network only: no metrics port published on the host
    published = {p["published"] for svc in resolved["services"].values()
                 for p in svc.get("ports", [])}
    assert not published & {"6066", "6067", "6068"}, published
    assert "cleanup.policy=compact" in " ".join(resolved["services"]["kafka-init"]["command"])
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}
    assert {"worker-1:6066", "worker-2:6066", "notifier:6067", "board:6068"} <= targets
    simulator = resolved["services"]["simulator"]["command"]
    assert simulator[:3] == ["simulate", "--broker", "kafka://kafka:9092"]


def test_prometheus_config_and_rules_pass_promtool():
    promtool = require("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "config", "prometheus.yml"], capture_output=True,
                           text=True, cwd=DEPLOY / "prometheus")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "10 rules found" in check.stdout


def test_alert_rules_fire_and_stay_quiet_as_their_unit_tests_say():
    promtool = require("promtool", "prometheus")
    run = subprocess.run([promtool, "test", "rules", "tests/clsmon-rules.test.yml"],
                         capture_output=True, text=True, cwd=DEPLOY / "prometheus")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_the_worker_image_runs_as_a_non_root_user():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert dockerfile.startswith("#") and "-slim" in dockerfile


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "clsmon.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "clsmon-rules.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_dashboard_and_rules_use_only_metrics_the_worker_exposes():
    from prometheus_client import CollectorRegistry

    from streams.notify.metrics import NotifyMetrics
    from streams.worker.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    notifier = CollectorRegistry()
    NotifyMetrics(notifier)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "summary": ("", "_sum", "_count"), "info": ("_info",)}
    exposed = {m.name + suffix for r in (registry, notifier) for m in r.collect()
               for suffix in suffixes.get(m.type, ("",))}
    used = set()
    for expr in dashboard_exprs() + rule_exprs():
        used |= set(re.findall(r"\bclsmon_[a-z_]+", expr))
    assert used, "no clsmon_ metric referenced"
    missing = sorted(used - exposed)
    assert not missing, f"dashboard/rules use metrics clsmon does not expose: {missing}"


def test_the_dashboard_covers_what_ops_watch():
    exprs = " ".join(dashboard_exprs())
    for metric in ("clsmon_observations_total", "clsmon_observation_to_alert_latency_seconds",
                   "clsmon_consumer_lag_messages", "clsmon_dead_letters_total",
                   "clsmon_alerts_total", "clsmon_patients", "process_resident_memory_bytes",
                   "clsmon_state_size_bytes", "clsmon_notifications_total",
                   "clsmon_notification_delivery_seconds"):
        assert metric in exprs, metric
