"""Python client of the orchestrator's job API, async (`AsyncClient`) and blocking (`Client`).

Configuration: arguments, else `AETHER_URL` / `AETHER_API_TOKEN` from the environment, else from
`.aether/credentials.env` (the file `./setup.sh` writes; `AETHER_CREDENTIALS` names another). Refusals raise
`AetherAPIError` with the server's stable `code`; submissions carry an Idempotency-Key and are retried on
connection errors, so a retry never creates a second job.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from services.settings import read_env_file  # the same parser the services use for the credentials file

DEFAULT_URL = "http://127.0.0.1:8080"
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"})
SUBMIT_RETRIES = 3


class AetherAPIError(Exception):
    """The orchestrator refused a request (or could not be reached: code CONNECTION_FAILED, status 0)."""

    def __init__(self, status: int, code: str, message: str, *, job_id: str | None = None,
                 field: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.job_id = job_id
        self.field = field
        self.details = details or {}


def _credentials() -> dict[str, str]:
    named = os.environ.get("AETHER_CREDENTIALS")
    candidates = [Path(named)] if named else [Path.cwd() / ".aether" / "credentials.env",
                                              Path(__file__).resolve().parent.parent / ".aether" / "credentials.env"]
    for path in candidates:
        values = read_env_file(path)
        if values:
            return values
    return {}


def resolve(url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """The orchestrator URL and API token, from the arguments, the environment or the credentials file."""
    creds: dict[str, str] | None = None
    if url is None:
        url = os.environ.get("AETHER_URL")
        if url is None:
            creds = _credentials()
            url = creds.get("AETHER_URL") or creds.get("ORCHESTRATOR_URL") or DEFAULT_URL
    if token is None:
        token = os.environ.get("AETHER_API_TOKEN")
        if token is None:
            creds = creds if creds is not None else _credentials()
            token = creds.get("AETHER_API_TOKEN")
    return url.rstrip("/"), token


def _error(r: httpx.Response) -> AetherAPIError:
    try:
        body = r.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return AetherAPIError(r.status_code, str(body.get("code") or f"HTTP_{r.status_code}"),
                          str(body.get("message") or r.text[:500] or r.reason_phrase), job_id=body.get("job_id"),
                          field=body.get("field"), details=body.get("details"))


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise _error(r)
    return r.json()


def _spec(spec: Any, fields: dict[str, Any]) -> dict[str, Any]:
    if hasattr(spec, "model_dump"):  # a services.schemas.JobSpec
        out = spec.model_dump(mode="json", exclude_none=True)
    else:
        out = dict(spec or {})
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


class SSE:
    """Parses a server-sent event stream line by line into (event, data)."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, Any] | None:
        if line == "":
            if not self.data:
                self.event = "message"
                return None
            event, data = self.event, "\n".join(self.data)
            self.event, self.data = "message", []
            try:
                return event, orjson.loads(data)
            except orjson.JSONDecodeError:
                return event, data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class AsyncClient:
    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url, self.token = resolve(url, token)
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(self.token), timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise AetherAPIError(0, "CONNECTION_FAILED", f"{self.url}: {exc.__class__.__name__}: {exc}") from exc
        return _check(r)

    async def submit(self, spec: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Submit a job spec (dict, JobSpec, or keyword fields); returns {"job_id", "state"}."""
        body = _spec(spec, fields)
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(SUBMIT_RETRIES):
            try:
                r = await self._http.post("/v1/jobs", json=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt + 1 == SUBMIT_RETRIES:
                    raise AetherAPIError(0, "CONNECTION_FAILED", f"{self.url}: {exc}") from exc
                continue
            return _check(r)
        raise AssertionError("unreachable")

    async def get(self, job_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/jobs/{job_id}")

    async def list(self, state: str | None = None, tenant: str | None = None, limit: int = 100) -> list[dict]:
        params = {k: v for k, v in {"state": state, "tenant": tenant, "limit": limit}.items() if v is not None}
        return await self._call("GET", "/v1/jobs", params=params)

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        return await self._call("GET", f"/v1/jobs/{job_id}/events")

    async def logs(self, job_id: str, attempt: int | None = None, limit: int = 10000) -> list[dict[str, Any]]:
        params = {"limit": limit, **({"attempt": attempt} if attempt else {})}
        return (await self._call("GET", f"/v1/jobs/{job_id}/logs", params=params))["lines"]

    async def follow(self, job_id: str) -> AsyncIterator[tuple[str, Any]]:
        """(event, data) until the job ends: `log` lines, `state` changes, then one `end`."""
        try:
            async with self._http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"},
                                         timeout=httpx.Timeout(30.0, read=None)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise _error(r)
                parser = SSE()
                async for line in r.aiter_lines():
                    item = parser.feed(line)
                    if item is not None:
                        yield item
        except httpx.TransportError as exc:
            raise AetherAPIError(0, "CONNECTION_FAILED", f"{self.url}: {exc}") from exc

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/v1/jobs/{job_id}")

    async def wait(self, job_id: str, poll_s: float = 0.5) -> dict[str, Any]:
        """The job once it has ended (bound it with `asyncio.timeout` if need be)."""
        while True:
            job = await self.get(job_id)
            if job["state"] in FINAL_STATES:
                return job
            await asyncio.sleep(poll_s)

    async def gpus(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/v1/gpus")


class Client:
    """The blocking twin of AsyncClient, for scripts and the CLI."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url, self.token = resolve(url, token)
        self._http = httpx.Client(base_url=self.url, headers=_headers(self.token), timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise AetherAPIError(0, "CONNECTION_FAILED", f"{self.url}: {exc.__class__.__name__}: {exc}") from exc
        return _check(r)

    def submit(self, spec: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        body = _spec(spec, fields)
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(SUBMIT_RETRIES):
            try:
                r = self._http.post("/v1/jobs", json=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt + 1 == SUBMIT_RETRIES:
                    raise AetherAPIError(0, "CONNECTION_FAILED", f"{self.url}: {exc}") from exc
                continue
            return _check(r)
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def list(self, state: str | None = None, tenant: str | None = None, limit: int = 100) -> list[dict]:
        params = {k: v for k, v in {"state": state, "tenant": tenant, "limit": limit}.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/events")

    def logs(self, job_id: str, attempt: int | None = None, limit: int = 10000) -> list[dict[str, Any]]:
        params = {"limit": limit, **({"attempt": attempt} if attempt else {})}
        return self._call("GET", f"/v1/jobs/{job_id}/logs", params=params)["lines"]

    def follow(self, job_id: str) -> Iterator[tuple[str, Any]]:
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"},
                                   timeout=httpx.Timeout(30.0, read=None)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _error(r)
                parser = SSE()
                for line in r.iter_lines():
                    item = parser.feed(line)
                    if item is not None:
                        yield item
        except httpx.TransportError as exc:
            raise AetherAPIError(0, "CONNECTION_FAILED", f"{self.url}: {exc}") from exc

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["state"] in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout}s")
            time.sleep(poll_s)

    def gpus(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/gpus")
