"""monitoring/: promtool checks and unit tests of the alert rules, the Grafana files, and one
end-to-end run of a real Prometheus (Debian's binary) scraping a real two-worker service."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from serving import free_port, start_serve, stop_process, wait_ready

MONITORING = ROOT / "monitoring"
START_BUDGET_S = 120  # two workers importing torch (~15 s on an idle 2-core machine)
CHECK_BUDGET_S = 45  # traffic, scrapes and the alert, once both are up


def binary(name: str) -> str:
    """Path of Prometheus' `name` binary, or skip saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} not found: install Debian's prometheus package (apt-get install -y "
            "prometheus; .ci/run does), which ships prometheus and promtool"
        )
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [binary("promtool"), *args], cwd=MONITORING, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_prometheus_config_and_rules_are_valid() -> None:
    promtool("check", "config", "prometheus.yml")
    out = promtool("check", "rules", "alerts.yml").stdout
    assert "SUCCESS: 5 rules found" in out


@pytest.mark.parametrize("tests_file", sorted((MONITORING / "tests").glob("*.yml")), ids=str)
def test_alert_rules_pass_their_promtool_unit_tests(tests_file: Path) -> None:
    promtool("test", "rules", str(tests_file.relative_to(MONITORING)))


def test_every_alert_rule_has_a_unit_test() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tested = set()
    for path in (MONITORING / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):  # a test where the alert fires
                    tested.add(check["alertname"])
    assert names == tested, f"alerts without a firing test: {sorted(names - tested)}"


def test_grafana_dashboard_and_provisioning_fit_together() -> None:
    dashboard = json.loads((MONITORING / "grafana/dashboards/slimlab.json").read_text())
    provisioning = MONITORING / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    titles = [panel["title"] for panel in dashboard["panels"]]
    for wanted in ("Request rate", "error rate", "latency", "batch size", "Drift"):
        assert any(wanted.lower() in t.lower() for t in titles), f"no {wanted!r} panel: {titles}"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    provider = yaml.safe_load((provisioning / "dashboards" / "slimlab.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    compose = yaml.safe_load((MONITORING / "docker-compose.yml").read_text())
    mounts = " ".join(compose["services"]["grafana"]["volumes"])
    assert provider["providers"][0]["options"]["path"] in mounts


# -- end to end: a real Prometheus scraping a real service -------------------------------------
def api(base: str, path: str, **params: str) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{base}{path}{query}", timeout=5) as answer:
        return json.loads(answer.read())["data"]


def value(base: str, promql: str) -> float | None:
    result = api(base, "/api/v1/query", query=promql)["result"]
    return float(result[0]["value"][1]) if result else None


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def prometheus_config(tmp_path: Path, service_port: int) -> Path:
    """The repo's prometheus.yml and alerts.yml, with the test's target and 1 s intervals."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(MONITORING / "alerts.yml")]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{service_port}"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_for(check, what: str, deadline: float, every: float = 0.5):
    """Poll `check()` until it returns something truthy, or fail naming `what`."""
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_prometheus_scrapes_the_service_and_the_error_rate_alert_fires(
    digits_export: Path, tmp_path: Path
) -> None:
    prometheus = binary("prometheus")
    good = json.dumps({"inputs": [[[float(i % 17) for i in range(8)]] * 8]}).encode()
    service, url, service_log = start_serve(
        digits_export / "model.int8.onnx", tmp_path, "serve.workers=2"
    )
    port = int(url.rsplit(":", 1)[1])
    prom_port = free_port()
    base = f"http://127.0.0.1:{prom_port}"
    prom_log = tmp_path / "prometheus.log"
    with open(prom_log, "w") as sink:
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={prometheus_config(tmp_path, port)}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"{base}/-/ready", prom, prom_log, timeout=30)
        wait_ready(f"{url}/ready", service, service_log, timeout=START_BUDGET_S)
        deadline = time.monotonic() + CHECK_BUDGET_S

        # normal traffic, one connection per request (spread over both workers)
        for _ in range(30):
            assert post(url, good) == 200
        ok = 'sum(slimlab_http_requests_total{job="slimlab", route="/predict", status="200"})'
        wait_for(lambda: value(base, ok) == 30, "Prometheus to scrape 30 good requests", deadline)
        assert value(base, 'up{job="slimlab"}') == 1
        assert value(base, 'count(slimlab_model_info{format="onnx-int8"})') == 1
        assert value(base, "slimlab_drift_window_samples") is not None
        assert value(base, "sum(slimlab_inference_batch_size_sum)") == 30

        # then a burst of bad requests, spread over several scrapes, until the alert is seen
        def error_alert() -> str | None:
            for _ in range(10):
                assert post(url, b"{not json") == 400
            alerts = api(base, "/api/v1/alerts")["alerts"]
            name = "SlimLabHighErrorRate"
            states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
            return next((s for s in states if s in ("pending", "firing")), None)

        state = wait_for(error_alert, "SlimLabHighErrorRate to go pending", deadline, every=0.25)
        assert state in ("pending", "firing")
        rejected = value(base, 'sum(slimlab_predict_rejected_total{reason="malformed_json"})')
        assert rejected is not None and rejected >= 10
        assert service.poll() is None, "the service died under bad requests"
    finally:
        stop_process(prom)
        stop_process(service)
