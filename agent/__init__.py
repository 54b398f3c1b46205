"""Aether node agent: reads GPUs (NVML or simulated), publishes telemetry and heartbeats, runs dispatched jobs."""

from services import __version__ as AGENT_VERSION

__all__ = ["AGENT_VERSION"]
