"""How the agent is started: settings precedence, clear refusals, no-GPU exit, the installer script's syntax."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from agent.__main__ import EXIT_NO_GPU, parse_args
from agent.job_env import build_env, resolve_user
from agent.settings import AgentSettings
from services.errors import ConfigError
from services.schemas import DispatchCommand, JobSpec

ROOT = Path(__file__).resolve().parents[2]


def test_env_then_yaml_then_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "aether.yaml"
    cfg.write_text("agent:\n  gpus: 8\n  interval_s: 0.5\n  gpu_model: L4\n  node: from-yaml\n")
    monkeypatch.setenv("AETHER_CONFIG", str(cfg))
    monkeypatch.setenv("AGENT_INTERVAL_S", "0.25")
    monkeypatch.setenv("NATS_URL", "nats://10.1.2.3:4222")
    monkeypatch.setenv("AGENT_JOB_ENV_PASSTHROUGH", "LANG,TZ")
    s = AgentSettings()
    assert (s.gpus, s.gpu_model, s.interval_s, s.node, s.nats_url) == (8, "L4", 0.25, "from-yaml",
                                                                       "nats://10.1.2.3:4222")
    assert s.job_env_passthrough == ["LANG", "TZ"]
    assert str(s.work_dir).endswith("/.aether/agent/from-yaml")
    flags = {k: v for k, v in vars(parse_args(["--node", "cli", "--interval", "2", "--simulated"])).items()
             if v is not None}
    s = AgentSettings(**flags)
    assert (s.node, s.interval_s, s.simulated, s.gpus) == ("cli", 2.0, True, 8)


@pytest.mark.parametrize(("env", "key"), [
    ({"AGENT_INTERVAL_S": "0.01"}, "AGENT_INTERVAL_S"),
    ({"AGENT_NODE": "bad.name"}, "AGENT_NODE"),
    ({"AGENT_GPU_MODEL": "Voodoo-5"}, "AGENT_GPU_MODEL"),
])
def test_bad_setting_stops_with_its_name(env, key, monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exit_:
        AgentSettings.load()
    assert exit_.value.code == 2 and key in capsys.readouterr().err


def test_unknown_job_user_is_a_config_error():
    if os.geteuid() != 0:
        # A non-root agent cannot switch users: it runs jobs as itself whatever AGENT_JOB_USER says.
        assert resolve_user("no-such-user-aether").uid is None
        return
    with pytest.raises(ConfigError, match="no such user"):
        resolve_user("no-such-user-aether")


def test_job_env_is_built_from_nothing(tmp_path):
    cmd = DispatchCommand(job_id="j", spec=JobSpec(name="t", command=["true"], env={"A": "1"}), gpu_indices=[2, 3],
                          gpu_uuids=[])
    agent_env = {"NATS_PASSWORD": "pw-123456789", "LANG": "de_DE.UTF-8", "DB_PASSWORD": "x", "TZ": "UTC",
                 "SECRET_KEY": "k", "PATH": "/root/bin"}
    env = build_env(cmd, workdir=tmp_path, user=resolve_user(None), passthrough=list(agent_env),
                    source_env=agent_env)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["LANG"] == "de_DE.UTF-8" and env["TZ"] == "UTC" and env["A"] == "1"
    assert "NATS_PASSWORD" not in env and "DB_PASSWORD" not in env and "SECRET_KEY" not in env
    assert "/root/bin" not in env["PATH"] and env["HOME"] == str(tmp_path)


async def test_without_gpu_the_agent_says_so_and_exits_nonzero():
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has NVML: the no-GPU path cannot be shown here")
    except pynvml.NVMLError:
        pass
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "--node", "nogpu", "--http-port", "0", "--nats", "nats://127.0.0.1:1",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == EXIT_NO_GPU
    assert b"--simulated" in err and b"NVML" in err


def test_install_script_is_valid_bash_and_dry_runs(tmp_path):
    script = ROOT / "agent" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    pw = tmp_path / "pw"
    pw.write_text("a-long-nats-password\n")
    r = subprocess.run(["bash", str(script), "--nats", "nats://10.0.0.1:4222", "--node", "gpu-01", "--user", "agent",
                        "--password-file", str(pw), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "AGENT_NODE=gpu-01" in r.stdout and "ExecStart=/opt/aether/venv/bin/python -m agent" in r.stdout
    assert "a-long-nats-password" not in r.stdout  # the dry run never prints the secret
    bad = subprocess.run(["bash", str(script), "--nats", "x", "--node", "a.b", "--dry-run"], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "node name" in bad.stderr


def test_container_jobs_get_only_their_gpus_and_no_secrets_on_the_command_line(tmp_path):
    from agent import container
    from agent.job_env import JobUser

    cmd = DispatchCommand(job_id="j1", attempt=2, gpu_indices=[1, 3], gpu_uuids=[],
                          spec=JobSpec(name="t", command=["python", "train.py"], image="nvcr.io/nvidia/pytorch:24.05",
                                       env={"WANDB_MODE": "offline", "HF_TOKEN_FILE": "/work/tok"}))
    env = build_env(cmd, workdir=tmp_path, user=JobUser("nobody", 65534, 65534), passthrough=[], source_env={})
    argv, client_env = container.wrap(cmd, ["python", "train.py"], env, tmp_path, JobUser("nobody", 65534, 65534))
    assert argv[:2] == ["docker", "run"] and argv[-3:] == ["nvcr.io/nvidia/pytorch:24.05", "python", "train.py"]
    assert argv[argv.index("--gpus") + 1] == '"device=1,3"' and argv[argv.index("--user") + 1] == "65534:65534"
    assert argv[argv.index("--name") + 1] == "aether-j1-2"
    assert client_env["CUDA_VISIBLE_DEVICES"] == "0,1"  # renumbered inside the container
    assert "offline" not in " ".join(argv)  # values travel in the client's environment only
    assert client_env["WANDB_MODE"] == "offline" and "--env" in argv and "WANDB_MODE" in argv


def test_uid_pool_gives_each_running_job_its_own_uid():
    from agent.job_env import UidPool

    pool = UidPool(5000, 5002, start=2)
    a = pool.take(set())
    b = pool.take({a.uid})
    c = pool.take({a.uid, b.uid})
    assert [a.uid, b.uid, c.uid] == [5002, 5000, 5001]  # round robin from the start, wrapping
    assert a.gid == a.uid and a.name == "aether-job-5002"
    assert pool.take({5000, 5001}).uid == 5002  # skips those in use
    with pytest.raises(ConfigError):
        pool.take({5000, 5001, 5002})
    assert UidPool.parse("") is None
    with pytest.raises(ConfigError):
        UidPool.parse("3000000")
    with pytest.raises(ConfigError):
        UidPool.parse("10-5")
