"""The agent's small state file (`<work_dir>/jobs.json`): jobs accepted or running, and the final states of jobs
that ran here, so a restarted agent finds orphans and never runs a job attempt twice."""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

log = logging.getLogger("aether.agent.jobs")


def job_key(job_id: str, attempt: int) -> str:
    return f"{job_id}.{attempt}"


class JobStore:
    """`running`: key -> {job_id, attempt, pid, create_time, gpu_uuids, ...}; `history`: key -> final event JSON;
    `unsent`: keys whose final event JetStream has not acknowledged yet (sent again after a restart).
    Writes are atomic (temp file, fsync, rename): a crash leaves the old or the new file, never half of one."""

    def __init__(self, path: Path, history_max: int = 2000) -> None:
        self.path = path
        self.history_max = history_max
        self.running: dict[str, dict[str, Any]] = {}
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.unsent: set[str] = set()

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # A damaged file must not stop the node: keep a copy for the operator and start empty.
            bad = self.path.with_suffix(".corrupt")
            log.error("job state file unreadable; set aside", extra={"path": str(self.path), "moved_to": str(bad),
                                                                     "error": repr(exc)})
            try:
                os.replace(self.path, bad)
            except OSError:
                pass
            return
        self.running = dict(data.get("running") or {})
        self.history = OrderedDict(data.get("history") or {})
        self.unsent = {k for k in data.get("unsent") or [] if k in self.history}

    def snapshot(self) -> str:
        return json.dumps({"v": 1, "running": self.running, "history": self.history, "unsent": sorted(self.unsent)},
                          separators=(",", ":"))

    def write(self, text: str | None = None) -> None:
        """Blocking (fsync): the agent calls it from a thread."""
        text = self.snapshot() if text is None else text
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        # 0600: jobs run as another account and must not read other jobs' outcomes (results, errors) here.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            os.fchmod(fh.fileno(), 0o600)  # also when a crash left an older temp file behind
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def finish(self, key: str, final_event: dict[str, Any]) -> None:
        self.running.pop(key, None)
        self.history[key] = final_event
        self.history.move_to_end(key)
        self.unsent.add(key)
        while len(self.history) > self.history_max:
            old, _ = self.history.popitem(last=False)
            self.unsent.discard(old)
