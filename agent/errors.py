"""The agent's typed errors: each carries a stable code (see services.errors)."""

from __future__ import annotations

from services.errors import AetherError


class AgentError(AetherError):
    """Root of every error the agent raises."""

    code = "AGENT_ERROR"


class NoGpuFound(AgentError):
    """NVML is missing, fails to initialise, or sees no GPU (and `--simulated` was not given)."""

    code = "NO_GPU_FOUND"


class FaultInjectionUnavailable(AgentError):
    """Faults can only be injected into simulated GPUs."""

    code = "FAULT_INJECTION_UNAVAILABLE"


class InvalidFault(AgentError):
    code = "INVALID_FAULT"


class JobRejected(AgentError):
    """A dispatch the agent cannot accept (bad GPU indices, unsafe job id, no container engine ...)."""

    code = "JOB_REJECTED"


class JobConflict(AgentError):
    """Another attempt of the same job still runs here; running both would run the job twice."""

    code = "CONFLICT"


class JobNotFound(AgentError):
    code = "JOB_NOT_FOUND"
