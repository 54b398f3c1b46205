"""The orchestrator's typed errors; each carries a stable code whose HTTP status lives in services.errors."""

from __future__ import annotations

from services.errors import AetherError


class OrchestratorError(AetherError):
    """Root of every error the orchestrator raises."""

    code = "INTERNAL"


class Unauthorized(OrchestratorError):
    code = "UNAUTHORIZED"


class Forbidden(OrchestratorError):
    code = "FORBIDDEN"


class InvalidRequest(OrchestratorError):
    code = "INVALID_REQUEST"


class InvalidJob(OrchestratorError):
    code = "INVALID_JOB"


class JobNotFound(OrchestratorError):
    code = "JOB_NOT_FOUND"


class JobNotCancellable(OrchestratorError):
    code = "JOB_NOT_CANCELLABLE"


class GpuNotFound(OrchestratorError):
    code = "GPU_NOT_FOUND"


class AlertNotFound(OrchestratorError):
    code = "ALERT_NOT_FOUND"


class QueueFull(OrchestratorError):
    code = "QUEUE_FULL"


class TenantQuotaExceeded(OrchestratorError):
    code = "TENANT_QUOTA_EXCEEDED"


class ResourceExhausted(OrchestratorError):
    code = "RESOURCE_EXHAUSTED"


class NoGpuWorkers(OrchestratorError):
    code = "NO_GPU_WORKERS"


class DatabaseUnavailable(OrchestratorError):
    code = "DATABASE_UNAVAILABLE"


class BusUnavailable(OrchestratorError):
    code = "BUS_UNAVAILABLE"
