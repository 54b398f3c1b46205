"""Jobs with an `image`: run under Docker with the NVIDIA runtime, the assigned GPUs only, as the job user."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

from agent.job_env import JobUser
from services.schemas import DispatchCommand

log = logging.getLogger("aether.agent.container")

# Variables the container gets from the job environment; the rest (PATH, HOME ...) belong to the image.
_HOST_ONLY = frozenset({"PATH", "HOME", "TMPDIR", "USER", "LOGNAME", "LD_LIBRARY_PATH", "CUDA_HOME",
                        "AETHER_JOB_DIR"})
WORKDIR = "/work"


def docker_with_nvidia() -> bool:
    """Is there a Docker engine here with the NVIDIA runtime? Blocking: call once, from a thread."""
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        r = subprocess.run([docker, "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    if r.returncode != 0:
        return False
    try:
        return "nvidia" in json.loads(r.stdout or "{}")
    except ValueError:
        return False


def container_name(cmd: DispatchCommand) -> str:
    return f"aether-{cmd.job_id}-{cmd.attempt}"


def wrap(cmd: DispatchCommand, argv: list[str], env: dict[str, str], workdir: Path, user: JobUser) -> tuple[list[str],
                                                                                                            dict[str, str]]:
    """The `docker run` argv and the client's environment. Values travel in the client's environment
    (`-e NAME` without a value), never on the command line where `ps` would show them."""
    inner = {k: v for k, v in env.items() if k not in _HOST_ONLY}
    # Inside the container only the assigned GPUs exist, numbered from 0.
    inner["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(cmd.gpu_indices)))
    inner["HOME"] = WORKDIR
    args = ["docker", "run", "--rm", "--init", "--name", container_name(cmd),
            "--gpus", f"\"device={','.join(str(i) for i in cmd.gpu_indices)}\"",
            "--volume", f"{workdir}:{WORKDIR}", "--workdir", WORKDIR, "--network", "bridge"]
    if user.switches:
        args += ["--user", f"{user.uid}:{user.gid}"]
    for key in sorted(inner):
        args += ["--env", key]
    client_env = {"PATH": env.get("PATH", ""), **inner}
    return [*args, cmd.spec.image or "", *argv], client_env


async def kill(cmd: DispatchCommand) -> None:
    """Stop the container itself: killing the docker client alone can leave it running."""
    docker = shutil.which("docker")
    if not docker:
        return
    with contextlib.suppress(OSError):
        proc = await asyncio.create_subprocess_exec(docker, "kill", container_name(cmd),
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
