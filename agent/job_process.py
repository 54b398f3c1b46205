"""A job's processes: started in a session (process group) of their own, output read line by line, and killed as
a whole group: SIGTERM, then SIGKILL after a grace period, descendants that left the group included."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from agent.job_env import JobUser, popen_user_kwargs

MAX_LINE = 65536  # JobLogLine.line's limit: longer lines are cut into pieces of this size
READ_CHUNK = 65536
POLL_S = 0.05


async def spawn(argv: list[str], *, env: dict[str, str], cwd: Path, user: JobUser) -> asyncio.subprocess.Process:
    """Start `argv` as the leader of a new session, so the job and everything it starts share one process group."""
    return await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=str(cwd), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, umask=0o077, close_fds=True,
        **popen_user_kwargs(user))


async def read_lines(stream: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    """Call `on_line` for each line (without its newline) until EOF; a final line without newline counts too."""
    pending = b""
    while True:
        chunk = await stream.read(READ_CHUNK)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            _emit(raw, on_line)
        while len(pending) >= MAX_LINE * 4:  # a line that never ends: flush it in pieces, keep memory bounded
            _emit(pending[:MAX_LINE], on_line)
            pending = pending[MAX_LINE:]
    if pending:
        _emit(pending, on_line)


def _emit(raw: bytes, on_line: Callable[[str], None]) -> None:
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    for start in range(0, max(len(text), 1), MAX_LINE):
        on_line(text[start:start + MAX_LINE])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # members exist (under another user we may no longer signal)
    return True


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of `pid`, including those that started sessions of their own."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(pgid: int, procs: list[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def _live_members(pgid: int) -> bool:
    """Is a non-zombie process left in the group? (A zombie waits for a reaper that may be slow, e.g. a
    container's init, but it holds nothing: it does not count.)"""
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


def _any_alive(pgid: int, procs: list[psutil.Process]) -> bool:
    if group_alive(pgid) and _live_members(pgid):
        return True
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


async def kill_group(pgid: int, grace_s: float, *, leader_wait: Callable[[], Awaitable[object]] | None = None,
                     extra: list[psutil.Process] | None = None) -> bool:
    """SIGTERM the group (and known descendants that left it), SIGKILL whatever is left after `grace_s`.
    `leader_wait` reaps our own child so its zombie does not keep the group looking alive. True if SIGKILL
    was needed."""
    procs = descendants(pgid) + list(extra or [])
    _signal_all(pgid, procs, signal.SIGTERM)
    _signal_all(pgid, procs, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    reaper = asyncio.ensure_future(leader_wait()) if leader_wait is not None else None
    killed = False
    try:
        await _wait_gone(pgid, procs, grace_s)
        if _any_alive(pgid, procs):
            procs = list({p.pid: p for p in procs + descendants(pgid)}.values())
            _signal_all(pgid, procs, signal.SIGKILL)
            killed = True
            await _wait_gone(pgid, procs, 5.0)  # SIGKILL cannot be refused: only D-state waits outlast this
    finally:
        if reaper is not None and not reaper.done():
            await asyncio.wait({reaper}, timeout=1.0)
    return killed


async def _wait_gone(pgid: int, procs: list[psutil.Process], within_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    # No event announces the exit of processes we did not start: poll.
    while _any_alive(pgid, procs) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
