"""What a job runs with: a clean environment (nothing of the agent's secrets), its GPUs pinned, its own working
directory, and an unprivileged user when the agent runs as root."""

from __future__ import annotations

import logging
import os
import pwd
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.settings import SECRET_ENV_RE
from services.errors import ConfigError
from services.schemas import DispatchCommand

log = logging.getLogger("aether.agent.jobs")

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # becomes a subject token and a directory name
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class JobUser:
    """Who jobs run as; None fields mean "as the agent" (the agent is not root)."""

    name: str | None
    uid: int | None
    gid: int | None

    @property
    def switches(self) -> bool:
        return self.uid is not None


def resolve_user(name: str | None) -> JobUser:
    """As root, jobs run as `name` (default `nobody`); a non-root agent cannot switch and runs them as itself."""
    if os.geteuid() != 0:
        return JobUser(None, None, None)
    if not name or name == "root":
        log.warning("jobs will run as root: set AGENT_JOB_USER to an unprivileged account")
        return JobUser(None, None, None)
    try:
        ent = pwd.getpwnam(name)
    except KeyError as exc:
        raise ConfigError(f"AGENT_JOB_USER={name}: no such user on this host", field="job_user") from exc
    return JobUser(name, ent.pw_uid, ent.pw_gid)


class UidPool:
    """One uid per running job, from AGENT_JOB_UIDS (e.g. 3000000-3009999), with a private group of the same
    number: two jobs on a node, of one tenant or two, cannot read each other's environment (/proc/<pid>/environ),
    files or signal each other's processes, which a shared account (`nobody`) allows. The uids need no
    /etc/passwd entry (the job gets USER/HOME from its environment). Handed out round robin from a random
    start, so a uid is rarely reused soon; a finished job's directory is taken back by the agent anyway."""

    def __init__(self, first: int, last: int, *, start: int | None = None) -> None:
        if not 0 < first <= last:
            raise ConfigError(f"AGENT_JOB_UIDS={first}-{last}: want FIRST-LAST with 0 < FIRST <= LAST",
                              field="job_uids")
        self.first, self.size = first, last - first + 1
        self.next = (start if start is not None else int.from_bytes(os.urandom(4), "big")) % self.size

    @classmethod
    def parse(cls, spec: str | None) -> UidPool | None:
        if not spec:
            return None
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", spec)
        if m is None:
            raise ConfigError(f"AGENT_JOB_UIDS={spec!r}: want FIRST-LAST, e.g. 3000000-3009999", field="job_uids")
        return cls(int(m[1]), int(m[2]))

    def take(self, in_use: set[int]) -> JobUser:
        for _ in range(self.size):
            uid = self.first + self.next
            self.next = (self.next + 1) % self.size
            if uid not in in_use:
                return JobUser(f"aether-job-{uid}", uid, uid)
        raise ConfigError(f"all {self.size} job uids are in use: widen AGENT_JOB_UIDS", field="job_uids")


def popen_user_kwargs(user: JobUser) -> dict:
    """subprocess keyword arguments that drop to the job user (and root's supplementary groups with it)."""
    if not user.switches:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def probe_python(candidate: str, user: JobUser, code: str = "import venv") -> bool:
    """Can the job user run this interpreter (and make a venv with it)? Blocking: call from a thread."""
    try:
        r = subprocess.run([candidate, "-c", code], capture_output=True, timeout=20, env={"PATH": DEFAULT_PATH},
                           cwd="/", **popen_user_kwargs(user))
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def choose_python(configured: str | None, user: JobUser) -> str | None:
    """The Python that runs `script` jobs: the configured one, else the agent's, else the system's python3 when
    the job user cannot reach the agent's (e.g. it lives under /root). None if none works."""
    candidates = [configured] if configured else [sys.executable, *SYSTEM_PYTHONS]
    for c in dict.fromkeys(candidates):
        if c and os.path.exists(c) and probe_python(c, user):
            return c
        log.warning("job user cannot run this Python", extra={"python": c, "job_user": user.name})
    return None


def job_dir(root: Path, job_id: str, attempt: int) -> Path:
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"job id {job_id!r} must match {JOB_ID_RE.pattern}")
    return root / "jobs" / f"{job_id}.{attempt}"


def prepare_dir(path: Path, user: JobUser) -> None:
    """The job's own directory, private to the job user (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tmp").mkdir(exist_ok=True)
    os.chmod(path, 0o700)
    if user.switches:
        for p in (path, path / "tmp"):
            os.chown(p, user.uid, user.gid)


def build_env(cmd: DispatchCommand, *, workdir: Path, user: JobUser, passthrough: list[str],
              extra_path: list[str] | None = None, source_env: dict[str, str] | None = None) -> dict[str, str]:
    """The job's whole environment, built from nothing: never a copy of the agent's (which holds NATS credentials)."""
    source = os.environ if source_env is None else source_env
    env: dict[str, str] = {"LANG": "C.UTF-8"}
    for key in passthrough:
        if key in source and not SECRET_ENV_RE.search(key):
            env[key] = source[key]
    env.update(cmd.spec.env)  # JobSpec refuses reserved names (PATH, HOME, CUDA_*, AETHER_*, NATS_* ...)
    account = user.name or _current_user()
    env.update({
        "PATH": ":".join([*(extra_path or []), DEFAULT_PATH]),
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "USER": account,
        "LOGNAME": account,
        "PYTHONUNBUFFERED": "1",  # so output lines reach the log stream as they are printed
        # CUDA numbers GPUs fastest-first by default; NVML (and so the scheduler) by PCI bus: make them agree.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in cmd.gpu_indices),
        "AETHER_JOB_ID": cmd.job_id,
        "AETHER_JOB_ATTEMPT": str(cmd.attempt),
        "AETHER_JOB_DIR": str(workdir),
    })
    return env


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
