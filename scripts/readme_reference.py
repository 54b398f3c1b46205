"""The README's generated reference sections (environment variables, NATS subjects and message fields), built
from the Settings classes, `services/subjects.py` and `services/schemas/`. `--write` updates README.md,
`--check` exits 1 when it is stale (tests/ops runs the check)."""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from enum import Enum
from pathlib import Path

from pydantic import AliasChoices, BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services import schemas, subjects  # noqa: E402
from services.bus import JOBS_STREAM  # noqa: E402
from services.settings import AetherSettings  # noqa: E402

README = ROOT / "README.md"
P = subjects.PREFIX

# subject, message model (None: raw bytes), how it travels, who publishes it.
SUBJECTS: list[tuple[str, str | None, str, str]] = [
    (f"{P}.telemetry.<node>", "TelemetryBatch", f"JetStream `{subjects.TELEMETRY_STREAM}`", "agent, every interval"),
    (f"{P}.heartbeat.<node>", "Heartbeat", "core NATS", "agent, every few seconds"),
    (f"{P}.cmd.<node>.run", "DispatchCommand", "request, reply `CommandReply`", "orchestrator -> agent"),
    (f"{P}.cmd.<node>.cancel", "CancelCommand", "request, reply `CommandReply`", "orchestrator -> agent"),
    (f"{P}.cmd.<node>.fault", "FaultCommand", "request, reply `CommandReply`", "operator -> simulated agent"),
    (f"{P}.jobs.<job_id>.state", "JobStateEvent", "core NATS (live; PostgreSQL keeps the history)",
     "orchestrator: every transition it makes"),
    (f"{P}.scheduler.hint.<job_id>", "SchedulerHint", f"JetStream `{JOBS_STREAM}`",
     "orchestrator: a job stored queued, a queued job cancelled (for the scheduler's leader)"),
    (f"{P}.jobs.<job_id>.state.<node>", "JobStateEvent", f"JetStream `{JOBS_STREAM}`",
     "the agent of `<node>` (only it may): RUNNING and the final state"),
    (f"{P}.jobs.<job_id>.log.<node>", "JobLogLine", f"JetStream `{JOBS_STREAM}`", "the agent of `<node>`: the job's output"),
    (f"{P}.alerts.<severity>.<node>", "Alert", "core NATS", "orchestrator"),
    (subjects.PLACEMENT, "PlacementDecision", "core NATS", "orchestrator, one per placement"),
    (subjects.MODEL_UPDATED, "ModelUpdated", "core NATS", "AI core training"),
    (f"{subjects.DEADLETTER_PREFIX}.<kind>", None, "core NATS; headers `Aether-Original-Subject`, `Aether-Reason`",
     "any service: a message that failed validation, as received"),
]
# Models whose fields are listed: the messages above and the models nested in them.
MODELS = ["TelemetryBatch", "TelemetrySample", "Heartbeat", "GpuInventory", "DispatchCommand", "CancelCommand",
          "FaultCommand", "CommandReply", "JobStateEvent", "JobLogLine", "Alert", "PlacementDecision", "ModelUpdated"]


def type_name(annotation) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # UtcDatetime and friends: the type, not the validators
        return type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    text = str(annotation).replace("typing.", "")
    return re.sub(r"\b(?:[a-z_]+\.)+([A-Za-z_]\w*)", r"\1", text).replace("<class '", "").replace("'>", "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def model_table(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().splitlines()
    lines = [f"**`{model.__name__}`**" + (f": {doc[0]}" if doc else ""), "",
             "| field | type | default | notes |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        if info.is_required():
            default = "required"
        elif info.default_factory is not None:
            default = "`[]`" if info.default_factory is list else "`{}`" if info.default_factory is dict else "computed"
        else:
            value = info.default.value if isinstance(info.default, Enum) else info.default
            default = f"`{value!r}`" if value is not PydanticUndefined else ""
        notes = info.description or ""
        enums = [a for a in (info.annotation, *typing.get_args(info.annotation))
                 if isinstance(a, type) and issubclass(a, Enum)]
        if enums:
            notes = (notes + "; " if notes else "") + "one of " + ", ".join(f"`{e.value}`" for e in enums[0])
        lines.append(f"| `{name}` | `{_cell(type_name(info.annotation))}` | {_cell(default)} | {_cell(notes)} |")
    return "\n".join(lines)


def subjects_section() -> str:
    out = ["| subject | message | travels as | published by |", "| --- | --- | --- | --- |"]
    for subject, model, how, who in SUBJECTS:
        out.append(f"| `{subject}` | {f'`{model}`' if model else 'raw bytes'} | {how} | {who} |")
    out.append("")
    for name in MODELS:
        out += [model_table(getattr(schemas, name)), ""]
    return "\n".join(out).rstrip() + "\n"


def env_name(field: str, info) -> str:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0]).upper()
    return str(alias or field).upper()


def default_text(info) -> str:
    if info.default_factory is not None:
        return "computed"
    if info.default is PydanticUndefined:
        return "required"
    value = info.default
    if isinstance(value, Path):
        value = str(value).replace(str(ROOT), "<repo>")
    return "" if value is None else f"`{value}`"


def settings_classes() -> list[tuple[str, type[AetherSettings]]]:
    from agent.settings import AgentSettings
    from ai_core.settings import AiCoreSettings
    from dashboard.settings import DashboardSettings
    from orchestrator.settings import OrchestratorSettings

    return [("every service", AetherSettings), ("orchestrator", OrchestratorSettings), ("AI core", AiCoreSettings),
            ("dashboard", DashboardSettings), ("agent", AgentSettings)]


def environment_section() -> str:
    out = ["| service | variable | default | notes |", "| --- | --- | --- | --- |"]
    base = set(AetherSettings.model_fields)
    for label, cls in settings_classes():
        for field, info in cls.model_fields.items():
            if cls is not AetherSettings and field in base:
                continue
            notes = "; ".join(n for n in (info.description, "secret" if field in cls.secret_fields else None) if n)
            out.append(f"| {label} | `{env_name(field, info)}` | {_cell(default_text(info))} | {_cell(notes)} |")
    return "\n".join(out) + "\n"


SECTIONS = {"environment": environment_section, "subjects": subjects_section}


def render(readme: str) -> str:
    for name, build in SECTIONS.items():
        begin = f"<!-- BEGIN GENERATED {name}: scripts/readme_reference.py --write -->\n"
        end = f"<!-- END GENERATED {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md lacks the markers of the generated section {name!r}")
        readme = pattern.sub(lambda _m, b=begin, e=end, t=build(): b + t + e, readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md's generated reference is stale: run .venv/bin/python scripts/readme_reference.py --write")
            return 1
        return 0
    if fresh != current:
        README.write_text(fresh)
        print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
