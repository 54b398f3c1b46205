"""Agent settings: AGENT_* env vars (and NATS_URL / NATS_USER / NATS_PASSWORD) over `.aether/credentials.env`
over the YAML section `agent`; command-line flags override them all."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from services import gpu_specs
from services.settings import ROOT, AetherSettings
from services.subjects import NODE_RE

# Environment of the agent a job may inherit when the operator lists it in `job_env_passthrough`; never anything
# whose name looks like a secret (see SECRET_ENV_RE).
DEFAULT_PASSTHROUGH = ("LANG", "LC_ALL", "TZ", "LD_LIBRARY_PATH", "CUDA_HOME", "HTTP_PROXY", "HTTPS_PROXY",
                       "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
SECRET_ENV_RE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|^NATS_|^AETHER_|"
                           r"^AGENT_|^DATABASE_URL$|^PG|^AWS_|^GOOGLE_|^AZURE_)", re.IGNORECASE)


def _env(name: str, default: Any, **kw: Any) -> Any:
    return Field(default, validation_alias=AliasChoices(f"AGENT_{name.upper()}", name), **kw)


def default_node_name() -> str:
    """The host name, cut to what a subject token allows."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64].strip("-")
    return name or "node"


class AgentSettings(AetherSettings):
    yaml_section: ClassVar[str] = "agent"
    secret_fields: ClassVar[tuple[str, ...]] = ()

    node: str | None = _env("node", None, description="default: the host name")
    simulated: bool = _env("simulated", False)
    gpus: int = _env("gpus", 4, ge=1, le=1024, description="simulated GPUs")
    gpu_model: str = _env("gpu_model", gpu_specs.DEFAULT_MODEL, description="simulated GPU model")
    interval_s: float = _env("interval_s", 1.0, ge=0.1, le=3600)
    heartbeat_s: float = _env("heartbeat_s", 5.0, gt=0, le=300)
    http_host: str = _env("http_host", "127.0.0.1")
    http_port: int = _env("http_port", 9501, ge=0, le=65535, description="0 turns the HTTP endpoint off")
    work_dir: Path | None = _env("work_dir", None, description="default .aether/agent/<node>")
    seed: int | None = _env("seed", None, description="simulator seed; default derived from the node name")
    ambient_c: float = _env("ambient_c", 30.0, ge=-20, le=60)
    buffer_max_batches: int = _env("buffer_max_batches", 900, ge=1, le=1_000_000)
    publish_timeout_s: float = _env("publish_timeout_s", 2.0, gt=0, le=60)
    pcie_min_period_s: float = _env("pcie_min_period_s", 5.0, ge=0, le=3600,
                                    description="NVML's PCIe throughput read blocks 20 ms: read it at most this often")
    nvml_slow_period_s: float = _env("nvml_slow_period_s", 10.0, ge=0, le=3600,
                                     description="ECC, retired/remapped memory, power limit, MIG mode: read this often")
    job_user: str | None = _env("job_user", "nobody", description="jobs run as this user when the agent is root")
    job_uids: str | None = _env("job_uids", "3000000-3009999",
                                description="as root, each job runs as its own uid from this range (FIRST-LAST); "
                                            "empty: every job runs as AGENT_JOB_USER")
    job_python: str | None = _env("job_python", None, description="Python that runs `script` jobs; default: the agent's")
    job_env_passthrough: Annotated[list[str], NoDecode] = _env("job_env_passthrough", list(DEFAULT_PASSTHROUGH))
    kill_grace_s: float = _env("kill_grace_s", 10.0, ge=0, le=600)
    job_log_buffer: int = _env("job_log_buffer", 100_000, ge=100, le=10_000_000)
    job_history: int = _env("job_history", 2000, ge=10, le=1_000_000)
    keep_job_dirs_s: float = _env("keep_job_dirs_s", 24 * 3600.0, ge=0)

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        if v is not None and not NODE_RE.match(v):
            raise ValueError(f"must match {NODE_RE.pattern} (it becomes a NATS subject token)")
        return v

    @field_validator("gpu_model")
    @classmethod
    def _model(cls, v: str) -> str:
        try:
            gpu_specs.spec(v)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from exc
        return v

    @field_validator("job_env_passthrough", mode="before")
    @classmethod
    def _passthrough(cls, v: Any) -> Any:
        if isinstance(v, str):  # AGENT_JOB_ENV_PASSTHROUGH=LANG,TZ
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _defaults(self) -> AgentSettings:
        if self.node is None:
            self.node = default_node_name()
        if self.work_dir is None:
            self.work_dir = ROOT / ".aether" / "agent" / self.node
        return self

    def effective_seed(self) -> int:
        import zlib

        return self.seed if self.seed is not None else zlib.crc32(self.node.encode())
