"""Root of Aether's typed errors: every error carries a stable code, mapped to an HTTP status here only."""

from __future__ import annotations

from typing import Any

# The one place where stable error codes meet HTTP statuses.
HTTP_STATUS: dict[str, int] = {
    "INVALID_JOB": 422,
    "INVALID_REQUEST": 422,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "JOB_NOT_FOUND": 404,
    "GPU_NOT_FOUND": 404,
    "ALERT_NOT_FOUND": 404,
    "NOT_FOUND": 404,
    "JOB_NOT_CANCELLABLE": 409,
    "CONFLICT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "QUEUE_FULL": 429,
    "TENANT_QUOTA_EXCEEDED": 429,
    "RESOURCE_EXHAUSTED": 503,
    "NO_GPU_WORKERS": 503,
    "DATABASE_UNAVAILABLE": 503,
    "BUS_UNAVAILABLE": 503,
    "NO_MODEL": 503,
    "MALFORMED_MESSAGE": 400,
    "CONFIG_INVALID": 500,
    "INTERNAL": 500,
}


class AetherError(Exception):
    """Base of every Aether error. Subclasses set `code`; `http_status` follows from HTTP_STATUS."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, job_id: str | None = None, field: str | None = None,
                 details: dict[str, Any] | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.job_id = job_id
        self.field = field
        self.details = details or {}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def to_body(self) -> dict[str, Any]:
        """The JSON error body every HTTP service answers with."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.job_id is not None:
            body["job_id"] = self.job_id
        if self.field is not None:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return body


class ConfigError(AetherError):
    code = "CONFIG_INVALID"


class MalformedMessage(AetherError):
    """A bus message that does not match its schema; it is counted and dead-lettered, never fatal."""

    code = "MALFORMED_MESSAGE"
