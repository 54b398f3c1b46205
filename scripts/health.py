"""Wait, with a deadline, until the stack's health URLs answer 200; print one line per program.
`python scripts/health.py [--timeout S] [--require NAME ...] [NAME ...]` exits 1 if a required one is not up."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack


def probe(url: str) -> tuple[bool, str]:
    """(up, short description) of one health URL."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body = r.read(4096).decode(errors="replace")
            return r.status == 200, _summary(body)
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code} {_summary(exc.read(4096).decode(errors='replace'))}"
    except (OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc)) or exc.__class__.__name__


def _summary(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:120]
    if not isinstance(data, dict):
        return body[:120]
    keys = ("status", "timescaledb", "model_version", "nodes", "gpus", "node")
    return " ".join(f"{k}={data[k]}" for k in keys if k in data) or body[:120]


def wait(urls: dict[str, str], timeout: float) -> dict[str, tuple[bool, str]]:
    """Poll every URL until all are up or the deadline passes; returns the last answer of each."""
    deadline = time.monotonic() + timeout
    state = {name: (False, "not probed") for name in urls}
    while True:
        for name, url in urls.items():
            if not state[name][0]:
                state[name] = probe(url)
        if all(up for up, _ in state.values()) or time.monotonic() >= deadline:
            return state
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", help="programs to check (default: every one with a health URL)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--require", action="append", default=[], help="fail unless this one is up")
    args = ap.parse_args(argv)
    urls = {p.name: p.health_url for p in stack.programs() if p.health_url and p.present()
            and (not args.names or p.name in args.names)}
    state = wait(urls, args.timeout)
    failed = False
    for name, (up, what) in state.items():
        mark = "up  " if up else "DOWN"
        print(f"  {mark} {name:<16} {urls[name]:<48} {what}")
        failed |= (not up and (name in args.require or not args.require))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
