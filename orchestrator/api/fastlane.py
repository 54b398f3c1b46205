"""POST /v1/jobs without the framework around it: the route researchers' tools hit hundreds of times a second.

The same functions as the FastAPI route (orchestrator/api/jobs.py: the submitter check, `admit`) and the same
answers (an AetherError becomes its JSON body and status, as services/http.py maps them), without the routing,
dependency solving and middleware layers, which measured here cost more per submission than admitting the job.
Anything else - another path or method, a query string, a browser's cross-origin request (CORS headers needed) -
goes through the application as usual. The route stays the documented one (OpenAPI)."""

from __future__ import annotations

import logging

import orjson
from starlette.requests import Request

from orchestrator.api.jobs import _require_submitter, admit
from services.errors import AetherError

log = logging.getLogger("aether.http")

_JSON = (b"content-type", b"application/json")


class SubmitFastLane:
    """The ASGI application uvicorn serves: the fast lane, then the FastAPI application for everything else."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/jobs"
                or scope.get("query_string") or any(k == b"origin" for k, _ in scope["headers"])):
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # (what Starlette would set: the route's functions read app.state)
        request = Request(scope, receive)
        try:
            status, body = await admit(request, _require_submitter(request))
        except AetherError as exc:
            status, body = exc.http_status, exc.to_body()
        except Exception:
            log.exception("unhandled error")
            status, body = 500, {"code": "INTERNAL", "message": "internal error"}
        payload = orjson.dumps(body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [_JSON, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
