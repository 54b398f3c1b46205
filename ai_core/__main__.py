"""`python -m ai_core`: serve the placement API (default 127.0.0.1:8000)."""

from __future__ import annotations

import uvicorn

from ai_core.app import create_app
from ai_core.settings import AiCoreSettings
from services import jsonlog


def main() -> None:
    settings = AiCoreSettings.load()
    jsonlog.configure("ai_core", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
