"""FastAPI glue shared by the HTTP services: AetherError -> JSON body with its stable code, validation -> 422."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.errors import AetherError

log = logging.getLogger("aether.http")


def install_error_handlers(app: FastAPI, *, validation_code: str = "INVALID_REQUEST") -> None:
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
