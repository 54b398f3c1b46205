"""Aether's Python client and command line: submit jobs, follow their logs, read results, list GPUs."""

from aether.client import AetherAPIError, AsyncClient, Client

__all__ = ["AetherAPIError", "AsyncClient", "Client"]
