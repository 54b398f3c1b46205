"""`python -m dashboard`: serve the dashboard on DASHBOARD_HOST:DASHBOARD_PORT (127.0.0.1:3000)."""

from __future__ import annotations

import argparse

import uvicorn

from dashboard.app import create_app
from dashboard.settings import DashboardSettings
from services import jsonlog


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__)
    parser.add_argument("--host", help="listen address (DASHBOARD_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (DASHBOARD_PORT, default 3000)")
    parser.add_argument("--orchestrator-url", help="the orchestrator's HTTP API as the browser reaches it")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port,
                                   "orchestrator_url": args.orchestrator_url}.items() if v is not None}
    settings = DashboardSettings.load(**overrides)
    jsonlog.configure("dashboard", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                timeout_graceful_shutdown=3)


if __name__ == "__main__":
    main()
