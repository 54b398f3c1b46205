"""`aether`: submit a job and follow it (exit status = the job's), list jobs, read or follow logs, cancel, list GPUs.

Exit status: `aether submit` exits with the job's exit code (124 timed out, 130 cancelled, 1 failed without a code)
and 125 when the job could not be submitted or followed, as `docker run` does; the other commands exit 1 on error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from aether.client import FINAL_STATES, AetherAPIError, Client

SUBMIT_FAILED = 125
STATE_EXIT = {"SUCCEEDED": 0, "FAILED": 1, "TIMED_OUT": 124, "CANCELLED": 130, "LOST": 1}


def _say(msg: str) -> None:
    print(f"[aether] {msg}", file=sys.stderr, flush=True)


def _name_from(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", Path(text).name).strip(".-_")[:64].replace("..", ".")
    return name if name and name[0].isalnum() else f"job-{name}".strip("-")[:64] or "job"


def _load_spec_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a job spec must be a mapping")
    return data


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = _load_spec_file(args.spec) if args.spec else {}
    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    if args.script:
        spec["script"] = Path(args.script).read_text()
        spec.setdefault("name", _name_from(Path(args.script).stem))
    elif command:
        spec["command"] = command
        spec.setdefault("name", _name_from(command[0]))
    env = dict(spec.get("env") or {})
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    if env:
        spec["env"] = env
    if args.requirement:
        spec["requirements"] = list(spec.get("requirements") or []) + args.requirement
    for key, value in (("name", args.name), ("gpus", args.gpus), ("gpu_mem_mb", args.gpu_mem_mb),
                       ("max_duration_s", args.max_duration), ("job_type", args.job_type), ("model", args.model),
                       ("priority", args.priority), ("tenant", args.tenant), ("image", args.image),
                       ("expected_util_pct", args.expected_util)):
        if value is not None:
            spec[key] = value
    if "command" not in spec and "script" not in spec:
        raise ValueError("give a command (aether submit -- CMD ARGS...), --script FILE or --spec FILE")
    return spec


def follow(client: Client, job_id: str, *, quiet_states: bool = False) -> dict[str, Any] | None:
    """Print the job's output as it comes (its stdout to stdout, the rest to stderr); the `end` event's data.
    A dropped stream is resumed; lines already printed are not printed again."""
    printed: set[tuple[int, int]] = set()
    for _ in range(20):
        try:
            for event, data in client.follow(job_id):
                if event == "log":
                    key = (data["attempt"], data["seq"])
                    if key in printed:
                        continue
                    printed.add(key)
                    out = sys.stdout if data["stream"] == "stdout" else sys.stderr
                    prefix = "[job] " if data["stream"] == "system" else ""
                    print(prefix + data["line"], file=out, flush=True)
                elif event == "state" and not quiet_states:
                    where = f" on {data['node']}" if data.get("node") else ""
                    why = f" ({data['reason']})" if data.get("reason") else ""
                    _say(f"{job_id} {data['state']}{where}{why}")
                elif event == "end":
                    return data
        except AetherAPIError as exc:
            if exc.code != "CONNECTION_FAILED":
                raise
            _say(f"log stream interrupted ({exc.message}); reconnecting")
    return None


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    try:
        spec = build_spec(args)
    except (OSError, ValueError) as exc:
        print(f"aether submit: {exc}", file=sys.stderr)
        return SUBMIT_FAILED
    try:
        answer = client.submit(spec)
    except AetherAPIError as exc:
        _error(exc)
        return SUBMIT_FAILED
    job_id = answer["job_id"]
    if args.detach:
        print(job_id)
        return 0
    _say(f"submitted {job_id} ({answer['state']}); follow it with: aether logs {job_id} -f")
    try:
        end = follow(client, job_id)
        job = client.get(job_id)
    except KeyboardInterrupt:
        _say(f"stopped following; the job goes on. Cancel it with: aether cancel {job_id}")
        return 130
    except AetherAPIError as exc:
        _error(exc)
        return SUBMIT_FAILED
    state = job["state"] if job["state"] in FINAL_STATES else (end or {}).get("state")
    detail = f"exit code {job['exit_code']}" if job.get("exit_code") is not None else (job.get("error") or "")
    _say(f"{job_id} {state}" + (f": {detail}" if detail else ""))
    if job.get("result") is not None and args.result:
        print(json.dumps(job["result"]))
    if job.get("exit_code") is not None:
        return int(job["exit_code"]) & 0xFF
    return STATE_EXIT.get(state or "", 1)


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    jobs = client.list(state=args.state, tenant=args.tenant, limit=args.limit)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    _table([[j["job_id"], j["name"], j["tenant"], j["state"], j.get("node"),
             ",".join(str(g["index"]) for g in j.get("assigned_gpus") or []), j.get("exit_code"),
             (j.get("submitted_at") or "")[:19].replace("T", " ")] for j in jobs],
           ["JOB", "NAME", "TENANT", "STATE", "NODE", "GPU", "EXIT", "SUBMITTED (UTC)"])
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.job_id)
    if args.events:
        job["events"] = client.events(args.job_id)
    print(json.dumps(job, indent=2))
    return 0


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    if args.follow:
        end = follow(client, args.job_id, quiet_states=True)
        return 0 if end is not None else 1
    for line in client.logs(args.job_id, attempt=args.attempt):
        out = sys.stdout if line["stream"] == "stdout" else sys.stderr
        print(line["line"], file=out)
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    answer = client.cancel(args.job_id)
    if args.wait and answer["state"] not in FINAL_STATES:
        job = client.wait(args.job_id, timeout=args.wait)
        answer["state"] = job["state"]
    print(f"{args.job_id} {answer['state']}")
    return 0


def cmd_gpus(client: Client, args: argparse.Namespace) -> int:
    gpus = client.gpus()
    if args.json:
        print(json.dumps(gpus, indent=2))
        return 0
    rows = []
    for g in gpus:
        s = g.get("sample") or {}
        mem = f"{(s.get('mem_used_mb') or 0) / 1024:.1f}/{(g.get('mem_total_mb') or 0) / 1024:.1f}G"
        rows.append([g["node"], g["index"], g["name"], "yes" if g.get("healthy") else "NO",
                     f"{s.get('util_gpu_pct', 0) or 0:.0f}%", mem, f"{s.get('temp_c') or 0:.0f}C",
                     len(g.get("jobs") or []), g.get("excluded_reason") or ""])
    _table(rows, ["NODE", "IDX", "MODEL", "HEALTHY", "UTIL", "MEM", "TEMP", "JOBS", "EXCLUDED"])
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aether", description="Submit and follow jobs on an Aether GPU cluster.")
    p.add_argument("--url", help="orchestrator URL (env AETHER_URL; default http://127.0.0.1:8080)")
    p.add_argument("--token", help="API token (env AETHER_API_TOKEN or .aether/credentials.env)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("submit", help="submit a job, follow its output, exit with its exit code",
                       usage="aether submit [options] (--script FILE | --spec FILE | -- COMMAND [ARGS...])")
    s.add_argument("--name", help="job name (default: from the command or script)")
    s.add_argument("--script", help="a Python file to run with the node's Python")
    s.add_argument("--spec", help="a JSON or YAML job spec; options given here override it")
    s.add_argument("--gpus", type=int, help="GPUs on one node (default 1)")
    s.add_argument("--gpu-mem-mb", type=int, help="GPU memory per GPU in MB (default 1024)")
    s.add_argument("--max-duration", type=int, help="kill after this many seconds (TIMED_OUT)")
    s.add_argument("--type", dest="job_type", choices=["training", "inference", "batch", "interactive"])
    s.add_argument("--model", help="name of the model the job loads (placement prefers GPUs that hold it)")
    s.add_argument("--priority", type=int)
    s.add_argument("--tenant")
    s.add_argument("--image", help="run in this container image (nodes with the NVIDIA container runtime)")
    s.add_argument("--expected-util", type=float, help="expected GPU utilisation, percent")
    s.add_argument("--env", action="append", metavar="KEY=VALUE")
    s.add_argument("--requirement", "-r", action="append", metavar="REQ", help="pip requirement (repeatable)")
    s.add_argument("--detach", "-d", action="store_true", help="print the job id and return")
    s.add_argument("--result", action="store_true", help="print the job's JSON result at the end")
    s.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments, after --")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("ls", help="list jobs, newest first")
    s.add_argument("--state", help="e.g. RUNNING or PENDING,RUNNING")
    s.add_argument("--tenant")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_ls)

    s = sub.add_parser("show", help="everything about one job (JSON)")
    s.add_argument("job_id")
    s.add_argument("--events", action="store_true", help="include every state transition")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("logs", help="a job's output")
    s.add_argument("job_id")
    s.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    s.add_argument("--attempt", type=int)
    s.set_defaults(fn=cmd_logs)

    s = sub.add_parser("cancel", help="cancel a job (its whole process group is killed)")
    s.add_argument("job_id")
    s.add_argument("--wait", type=float, nargs="?", const=60.0, help="wait (seconds) until it has ended")
    s.set_defaults(fn=cmd_cancel)

    s = sub.add_parser("gpus", help="the cluster's GPUs, live")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_gpus)
    return p


def _error(exc: AetherAPIError) -> None:
    where = f" (field {exc.field})" if exc.field else ""
    print(f"aether: {exc.code}: {exc.message}{where}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with Client(args.url, args.token) as client:
        try:
            return args.fn(client, args)
        except AetherAPIError as exc:
            _error(exc)
            return 1
        except TimeoutError as exc:
            print(f"aether: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
