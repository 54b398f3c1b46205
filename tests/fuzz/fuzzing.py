"""Fuzz a running service from the OpenAPI schema it serves (schemathesis + Hypothesis), bounded in examples and in
wall-clock time. Every answer is checked: no 5xx but a 503 that names a stable code, and every refusal a JSON body
whose `code` is one of the stable codes, with the HTTP status that code maps to (services/errors.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from services.errors import HTTP_STATUS

# 503 is an answer, not a crash, when it names why: the dependency that is missing.
ACCEPTABLE_503 = frozenset({"DATABASE_UNAVAILABLE", "BUS_UNAVAILABLE", "NO_GPU_WORKERS", "RESOURCE_EXHAUSTED",
                            "NO_MODEL"})
# What uvicorn answers, before any application code runs, to bytes that are not a valid HTTP request (e.g. a
# request line over its size limit): no JSON can be promised there, and none of Aether's code is involved.
PROTOCOL_REJECTION = b"Invalid HTTP request received."
SHOW = 600  # characters of a reproducing command shown per finding


@dataclass
class Findings:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)  # findings already tracked by an xfail test
    protocol_rejections: int = 0
    stopped_early: list[str] = field(default_factory=list)

    def record(self, label: str, status: int, body: bytes, content_type: str, repro: Callable[[], str],
               known: str | None = None) -> None:
        self.requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status >= 400:
            try:
                code = str(json.loads(body).get("code"))
                self.codes[code] = self.codes.get(code, 0) + 1
            except (ValueError, AttributeError):
                pass
        why = judge(status, body, content_type)
        if why == "protocol":
            self.protocol_rejections += 1
        elif why and known:
            self.known.append(f"{label}: {known}")
        elif why:
            self.problems.append(f"{label}: {why}\n  {repro()[:SHOW]}")

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "by_status": dict(sorted(self.by_status.items())),
                "codes": dict(sorted(self.codes.items())), "problems": len(self.problems),
                "known_findings": len(self.known), "protocol_rejections": self.protocol_rejections,
                "operations_cut_by_time": self.stopped_early}

    def report(self) -> str:
        return "\n".join(self.problems[:10]) + (f"\n... and {len(self.problems) - 10} more"
                                                 if len(self.problems) > 10 else "")


def judge(status: int, body: bytes, content_type: str) -> str | None:
    """Why this answer breaks the contract ("protocol" for the HTTP server's own refusal), or None."""
    if status < 400:
        return None
    if status == 400 and body.strip() == PROTOCOL_REJECTION:
        return "protocol"
    if "json" not in content_type:
        return f"{status} without a JSON error body ({content_type!r}): {body[:200]!r}"
    try:
        data = json.loads(body)
    except ValueError:
        return f"{status} with a body that is not JSON: {body[:200]!r}"
    code = data.get("code") if isinstance(data, dict) else None
    if not isinstance(code, str) or code not in HTTP_STATUS:
        return f"{status} without a stable code: {body[:300]!r}"
    if not isinstance(data.get("message"), str):
        return f"{status} {code} without a message"
    if HTTP_STATUS[code] != status:
        return f"{code} answered with {status}, its status is {HTTP_STATUS[code]}"
    if status >= 500 and not (status == 503 and code in ACCEPTABLE_503):
        return f"server error {status} {code}: {body[:300]!r}"
    return None


def fuzz(base_url: str, *, headers: dict[str, str], max_examples: int, budget_s: float, found: Findings | None = None,
         known: Callable[[Any], str | None] = lambda case: None) -> Findings:
    """Positive and negative examples for every operation of the served schema; stops generating when the
    wall-clock budget is spent (the operations not reached are listed). Never shrinks: a finding is reported with
    the curl command that reproduces it. `known(case)` names a finding already tracked elsewhere."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    found = found or Findings()
    deadline = time.monotonic() + budget_s
    ops = [r.ok() for r in schema.get_all_operations()]
    assert ops, "the schema lists no operations"
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                found.stopped_early.append(f"{op.label} ({mode.value})")
                continue
            _fuzz_one(op, mode, base_url, headers, max_examples, deadline, found, known)
    return found


def _fuzz_one(op, mode, base_url: str, headers: dict[str, str], max_examples: int, deadline: float,
              found: Findings, known: Callable[[Any], str | None]) -> None:
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True, print_blob=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        if time.monotonic() > deadline:
            return
        label = f"{op.label} ({mode.value})"
        try:
            resp = case.call(base_url=base_url, headers=headers, timeout=15)
        except Exception as exc:  # a dropped connection or a hang is a finding too
            found.problems.append(f"{label}: {exc!r}\n  {_curl(case, base_url, headers)[:SHOW]}")
            return
        found.record(label, resp.status_code, resp.content, ",".join(resp.headers.get("content-type", [])),
                     lambda: _curl(case, base_url, headers), known(case))

    try:
        run()
    except Unsatisfiable:
        pass  # nothing to make invalid: an operation without parameters has no negative examples


def _curl(case, base_url: str, headers: dict[str, str]) -> str:
    try:
        return case.as_curl_command(headers={**headers, "Authorization": "Bearer $TOKEN"})
    except Exception:  # the command cannot always be built (odd bytes); the label says enough then
        return f"(no curl command) {case.method} {base_url}{case.formatted_path}"
