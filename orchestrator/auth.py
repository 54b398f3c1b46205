"""Bearer tokens with roles (viewer < submitter < operator < admin) and tenants, compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from orchestrator.errors import Forbidden, Unauthorized
from orchestrator.settings import OrchestratorSettings

ROLES = ("viewer", "submitter", "operator", "admin")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    tenant: str | None  # None: every tenant (admin and cluster-wide operator tokens)

    def at_least(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees_tenant(self, tenant: str | None) -> bool:
        return self.tenant is None or self.tenant == tenant


ANONYMOUS_ADMIN = Principal("anonymous", "admin", None)


class Authenticator:
    def __init__(self, settings: OrchestratorSettings) -> None:
        self.enabled = settings.auth_enabled
        self._tokens = [(t.token.encode(), Principal(t.name or t.role, t.role, t.tenant)) for t in settings.all_tokens()]

    def identify(self, token: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS_ADMIN
        if not token:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        given = token.encode()
        found: Principal | None = None
        # Compare against every token, always, so timing says nothing about which one nearly matched.
        for secret, principal in self._tokens:
            if hmac.compare_digest(given, secret):
                found = principal
        if found is None:
            raise Unauthorized("invalid token")
        return found


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def require(role: str):
    """FastAPI dependency: the caller's Principal, at least `role`."""

    def dep(request: Request) -> Principal:
        principal = request.app.state.rt.auth.identify(bearer(request))
        if not principal.at_least(role):
            raise Forbidden(f"this needs the {role} role; the token has {principal.role}")
        return principal

    return dep
