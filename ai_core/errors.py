"""The AI core's typed errors, each with a stable code (HTTP statuses live in services.errors)."""

from __future__ import annotations

from services.errors import AetherError


class AiCoreError(AetherError):
    """Root of every error the AI core raises."""

    code = "INTERNAL"


class NoModel(AiCoreError):
    """No placement model is loaded: the orchestrator falls back to its heuristic."""

    code = "NO_MODEL"


class InvalidPlacementRequest(AiCoreError):
    code = "INVALID_REQUEST"


class PayloadTooLarge(AiCoreError):
    code = "PAYLOAD_TOO_LARGE"


class NoFeasibleCandidate(AiCoreError):
    """No candidate (or no node with enough candidates) passes the hard constraints."""

    code = "RESOURCE_EXHAUSTED"


class ModelVersionNotFound(AiCoreError):
    code = "NOT_FOUND"


class ModelInvalid(AiCoreError):
    """A model file that cannot be loaded or was built for other features; never served."""

    code = "INTERNAL"


class TraceInvalid(AiCoreError):
    """A trace CSV with bad rows; `details['errors']` lists them with their line numbers."""

    code = "INVALID_REQUEST"
