"""`python -m orchestrator`: serve the orchestrator on ORCHESTRATOR_HOST:ORCHESTRATOR_PORT (127.0.0.1:8080)."""

from __future__ import annotations

import uvicorn

from orchestrator.api.fastlane import SubmitFastLane
from orchestrator.app import create_app
from orchestrator.settings import OrchestratorSettings
from services import jsonlog


def main() -> None:
    settings = OrchestratorSettings.load()
    jsonlog.configure("orchestrator", settings.log_level)
    uvicorn.run(SubmitFastLane(create_app(settings)), host=settings.host, port=settings.port, log_config=None,
                ws_max_size=1 << 20, ws_per_message_deflate=settings.ws_compression, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
