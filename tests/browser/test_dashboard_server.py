"""The dashboard server on its own: /config.js tells the page where the orchestrator is, /health, /metrics,
security headers, and only the listed vendor files are served."""

from __future__ import annotations

import httpx

from services.localstack import free_port
from tests.support.procs import Service

VIEWER = "viewer-token-server-0123456789"


def test_dashboard_server_config_and_health(output_dir):
    port = free_port()
    dash = Service("dashboard", env={"DASHBOARD_PORT": str(port), "DASHBOARD_ORCHESTRATOR_URL": "http://127.0.0.1:18080/",
                                     "DASHBOARD_VIEWER_TOKEN": VIEWER}, port=port,
                   log_path=output_dir / "dashboard.log").start()
    try:
        cfg = httpx.get(f"{dash.url}/config.js", timeout=5)
        assert cfg.status_code == 200 and cfg.headers["content-type"].startswith("text/javascript")
        assert '"apiUrl":"http://127.0.0.1:18080"' in cfg.text  # trailing slash dropped
        assert '"wsUrl":"ws://127.0.0.1:18080/v1/ws"' in cfg.text and VIEWER in cfg.text
        assert cfg.headers["cache-control"] == "no-store"
        index = httpx.get(dash.url, timeout=5)
        assert index.status_code == 200 and 'src="/static/js/main.js"' in index.text
        csp = index.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self' http://127.0.0.1:18080 ws://127.0.0.1:18080" in csp
        assert httpx.get(f"{dash.url}/static/js/main.js", timeout=5).status_code == 200
        health = httpx.get(f"{dash.url}/health", timeout=5).json()
        assert health["status"] == "ok" and health["viewer_token_embedded"] is True
        assert health["charts"] is True, "uPlot missing: run npm ci in dashboard/"
        assert httpx.get(f"{dash.url}/vendor/uplot/uPlot.esm.js", timeout=5).status_code == 200
        missing = httpx.get(f"{dash.url}/vendor/uplot/package.json", timeout=5)
        assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
        assert httpx.get(f"{dash.url}/static/../app.py", timeout=5).status_code == 404
        metrics = httpx.get(f"{dash.url}/metrics", timeout=5).text
        assert 'aether_dashboard_http_requests_total{route="/config.js",status="2xx"} 1.0' in metrics
        assert "aether_dashboard_uplot_installed 1.0" in metrics
    finally:
        dash.stop()


def test_bad_setting_stops_the_server_naming_it(output_dir):
    port = free_port()
    dash = Service("dashboard", env={"DASHBOARD_PORT": str(port), "DASHBOARD_ORCHESTRATOR_URL": "ftp://nope"},
                   port=port, log_path=output_dir / "dashboard.log")
    dash.start(health_path=None)
    try:
        assert dash.proc.wait(20) == 2
        assert "ORCHESTRATOR_URL" in dash.tail().upper()
    finally:
        dash.stop()
