"""The client and CLI without a server: spec building from arguments, SSE parsing, configuration, exit statuses."""

from __future__ import annotations

import json

import httpx
import pytest

from aether import cli
from aether.client import SSE, AetherAPIError, Client, resolve


def spec_of(*argv: str) -> dict:
    return cli.build_spec(cli.parser().parse_args(["submit", *argv]))


def test_submit_arguments_become_a_spec(tmp_path):
    spec = spec_of("--gpus", "2", "--gpu-mem-mb", "4096", "--env", "A=1", "--env", "B=x=y", "-r", "numpy",
                   "--type", "training", "--", "python3", "train.py", "--epochs", "3")
    assert spec == {"command": ["python3", "train.py", "--epochs", "3"], "name": "python3", "gpus": 2,
                    "gpu_mem_mb": 4096, "env": {"A": "1", "B": "x=y"}, "requirements": ["numpy"],
                    "job_type": "training"}
    script = tmp_path / "my job.py"
    script.write_text("print(1)\n")
    assert spec_of("--script", str(script)) == {"script": "print(1)\n", "name": "my-job"}
    f = tmp_path / "spec.json"
    f.write_text(json.dumps({"name": "from-file", "command": ["true"], "priority": 5}))
    assert spec_of("--spec", str(f), "--priority", "9") == {"name": "from-file", "command": ["true"], "priority": 9}
    with pytest.raises(ValueError):
        spec_of("--gpus", "1")  # nothing to run
    with pytest.raises(ValueError):
        spec_of("--env", "NOEQUALS", "--", "true")


def test_sse_parser():
    p = SSE()
    got = [p.feed(line) for line in ["event: log", 'data: {"line": "a"}', "", ": keepalive", "", "data: x", ""]]
    assert [g for g in got if g is not None] == [("log", {"line": "a"}), ("message", "x")]


def test_configuration_from_env_and_credentials_file(tmp_path, monkeypatch):
    creds = tmp_path / "credentials.env"
    creds.write_text("AETHER_API_TOKEN='from-file-token-123'\nORCHESTRATOR_URL=http://10.0.0.5:8080/\n")
    monkeypatch.setenv("AETHER_CREDENTIALS", str(creds))
    monkeypatch.delenv("AETHER_URL", raising=False)
    monkeypatch.delenv("AETHER_API_TOKEN", raising=False)
    assert resolve() == ("http://10.0.0.5:8080", "from-file-token-123")
    monkeypatch.setenv("AETHER_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("AETHER_API_TOKEN", "env-token")
    assert resolve() == ("http://127.0.0.1:9999", "env-token")
    assert resolve("http://x:1", "t") == ("http://x:1", "t")


def test_errors_carry_the_stable_code_and_submit_retries_with_one_key():
    keys = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key"))
        if len(keys) == 1:
            raise httpx.ConnectError("dropped")
        return httpx.Response(429, json={"code": "QUEUE_FULL", "message": "full", "details": {"queued": 9}})

    with Client("http://test", "tok", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(AetherAPIError) as e:
            c.submit({"name": "x", "command": ["true"]})
    assert e.value.code == "QUEUE_FULL" and e.value.status == 429 and e.value.details == {"queued": 9}
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]  # the retry cannot create a second job


def test_submit_exit_status_follows_the_job(monkeypatch, capsys):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"job_id": "j0123456789abcdef", "state": "PENDING"})
        if request.url.path.endswith("/logs"):
            body = ('event: log\ndata: {"attempt": 1, "seq": 0, "stream": "stdout", "line": "hi"}\n\n'
                    'event: end\ndata: {"state": "FAILED", "exit_code": 7}\n\n')
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"job_id": "j0123456789abcdef", "state": "FAILED", "exit_code": 7,
                                         "result": None, "error": "exit code 7"})

    transport = httpx.MockTransport(handler)
    monkeypatch.setattr(cli, "Client", lambda url, token: Client("http://test", "t", transport=transport))
    assert cli.main(["submit", "--", "false"]) == 7
    out = capsys.readouterr()
    assert out.out == "hi\n" and "FAILED" in out.err
