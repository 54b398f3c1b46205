"""FastAPI glue shared by the HTTP services: AetherError -> JSON body with its stable code, validation -> 422,
URLs carrying NUL bytes refused."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.errors import AetherError

log = logging.getLogger("aether.http")


class RefuseNulInUrl:
    """ASGI middleware: a URL whose path or query holds a NUL byte is refused (422 INVALID_REQUEST) before any route
    runs. No text column, subject or file name can hold one; let through, it reaches PostgreSQL as a 500."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and ("\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"")
                                        or b"\x00" in scope.get("query_string", b"")):
            body = json.dumps({"code": "INVALID_REQUEST", "message": "the URL holds a NUL byte",
                               "field": "url"}).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI, *, validation_code: str = "INVALID_REQUEST") -> None:
    app.add_middleware(RefuseNulInUrl)

    @app.exception_handler(AetherError)
    async def _aether(_: Request, exc: AetherError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
        field = ".".join(loc) or None
        code = validation_code if request.url.path.rstrip("/").endswith("/jobs") else "INVALID_REQUEST"
        body = {"code": code, "message": f"{field or 'request'}: {first.get('msg')}", "field": field,
                "details": {"errors": [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                                        "msg": e.get("msg")} for e in errors[:20]]}}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"code": "INTERNAL", "message": "internal error"}, status_code=500)
