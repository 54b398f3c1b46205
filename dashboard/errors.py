"""The dashboard server's typed errors (stable codes, statuses mapped in services.errors)."""

from __future__ import annotations

from services.errors import AetherError


class DashboardError(AetherError):
    """Root of every error the dashboard server raises."""

    code = "INTERNAL"


class AssetNotFound(DashboardError):
    code = "NOT_FOUND"
