"""Jobs and alerts in Chromium against the real stack (orchestrator, dashboard, two simulated agents): a job
submitted over HTTP shows up, runs, and its logs follow live on its page; an operator cancels a job and
acknowledges an alert raised by an injected fault, after the page asks for an operator token."""

from __future__ import annotations

import httpx
import pytest

from services.localstack import wait_for
from services.schemas import FaultCommand
from tests.browser.conftest import OPERATOR_TOKEN
from tests.support.procs import auth_headers

pytestmark = pytest.mark.browser

LOG_SCRIPT = ("import json, time\n"
              "for i in range(40):\n"
              "    print(f'step {i} loss {1 / (i + 1):.4f}', flush=True)\n"
              "    time.sleep(0.15)\n"
              "print(json.dumps({'loss': 0.025, 'steps': 40}))\n")
LONG_SCRIPT = ("import time\n"
               "print('warming up', flush=True)\n"
               "while True:\n"
               "    print('working', flush=True)\n"
               "    time.sleep(1)\n")


def submit(stack, name: str, script: str, **extra) -> str:
    r = httpx.post(f"{stack.orch.url}/v1/jobs", headers=auth_headers(), timeout=10,
                   json={"name": name, "script": script, "gpu_mem_mb": 2048, "job_type": "training",
                         "max_duration_s": 120, **extra})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def job_state(stack, job_id: str) -> str:
    return httpx.get(f"{stack.orch.url}/v1/jobs/{job_id}", headers=auth_headers(), timeout=5).json()["state"]


def test_job_shows_up_runs_and_its_logs_follow(make_stack, page, output_dir):
    stack = make_stack(embed_viewer=True)
    stack.uuids()
    page.goto(f"{stack.dash.url}/#/jobs")
    job_id = submit(stack, "browser-train", LOG_SCRIPT)

    # It shows up in the jobs list by itself (a live "job" event), then its page follows the run.
    page.wait_for_selector(f'tr[data-job-id="{job_id}"]', timeout=15000)
    row = page.locator(f'tr[data-job-id="{job_id}"]')  # a locator: the list redraws under it
    assert "browser-train" in row.inner_text()
    row.locator("a").click()
    page.wait_for_function("(id) => location.hash === '#/jobs/' + id", arg=job_id)
    page.wait_for_selector(".detail-head .state-RUNNING, .detail-head .state-SUCCEEDED", timeout=20000)
    page.wait_for_selector(".logs .line", timeout=15000)
    first = page.locator(".logs .line").count()
    # More lines arrive while the page is open, without a reload: the logs follow live.
    page.wait_for_function("(n) => document.querySelectorAll('.logs .line').length > n", arg=first, timeout=15000)
    page.screenshot(path=str(output_dir / "job-running.png"), full_page=True)

    page.wait_for_selector(".detail-head .state-SUCCEEDED", timeout=30000)
    page.wait_for_function("() => document.querySelectorAll('.logs .line.stdout').length >= 40", timeout=15000)
    # Every line once, in order, whether it came from the stored logs or live.
    texts = page.locator(".logs .line.stdout .txt").all_inner_texts()
    assert texts[:40] == [f"step {i} loss {1 / (i + 1):.4f}" for i in range(40)]
    seqs = page.locator(".logs .line").evaluate_all("els => els.map(e => e.dataset.seq)")
    assert len(seqs) == len(set(seqs))
    # The stored history replaces the transition first shown live; the result (last JSON line) is shown.
    page.wait_for_function("() => { const t = document.querySelector('.history').innerText;"
                           " return /RUNNING[\\s\\S]*SUCCEEDED/.test(t) && !/ live/.test(t); }", timeout=10000)
    page.wait_for_selector(".kv dt:text-is('Result')", timeout=10000)
    assert '"loss":0.025' in page.inner_text(".kv").replace(" ", "")
    # Where it was placed and why: the AI core is not running here, so the heuristic fallback says so.
    facts = page.inner_text(".two-col")
    assert "Chosen" in facts and "heuristic" in facts and "Fallback" in facts
    page.screenshot(path=str(output_dir / "job-done.png"), full_page=True)
    assert job_state(stack, job_id) == "SUCCEEDED"
    assert page.errors == []


def test_operator_cancels_a_job_and_acknowledges_an_alert(make_stack, page, output_dir):
    stack = make_stack(embed_viewer=True)
    uuids = stack.uuids()
    job_id = submit(stack, "browser-cancel-me", LONG_SCRIPT)
    wait_for(lambda: job_state(stack, job_id) == "RUNNING", 30, "the job to run")

    page.goto(f"{stack.dash.url}/#/jobs/{job_id}")
    page.wait_for_selector(".detail-head .state-RUNNING", timeout=15000)
    page.wait_for_selector(".logs .line", timeout=15000)
    # The embedded token is a viewer's: the orchestrator refuses the cancel and the page asks for a better token.
    page.click("[data-action=cancel]")
    page.wait_for_selector("#token-dialog[open]", timeout=10000)
    assert "operator" in page.inner_text("#token-reason")
    assert job_state(stack, job_id) == "RUNNING"
    page.fill("#token-input", OPERATOR_TOKEN)
    page.click("#token-save")
    page.wait_for_selector("#token-dialog[open]", state="detached")
    page.click("[data-action=cancel]")
    page.wait_for_selector(".detail-head .state-CANCELLED", timeout=30000)
    assert job_state(stack, job_id) == "CANCELLED"
    # A reply fetched before the job ended (REST crossing the live event) must not bring it back to life.
    kept = page.evaluate("""async (id) => {
        const { store } = await import("/static/js/store.js");
        store.applyJobs([{ job_id: id, state: "RUNNING" }]);
        store.touch();
        return store.jobs.get(id).state;
    }""", job_id)
    assert kept == "CANCELLED"
    page.wait_for_selector(".detail-head .state-CANCELLED", timeout=5000)
    page.screenshot(path=str(output_dir / "job-cancelled.png"), full_page=True)

    # An uncorrectable ECC error on one GPU: a critical alert opens at once and the card turns red.
    node = stack.nodes[0]
    stack.inject(node, FaultCommand(fault="ecc_dbe", gpu_index=0, count=1))
    gpus = httpx.get(f"{stack.orch.url}/v1/gpus", headers=auth_headers(), timeout=5).json()
    target = next(g["uuid"] for g in gpus if g["node"] == node and g["index"] == 0 and g["uuid"] in uuids)
    page.goto(f"{stack.dash.url}/#/alerts")
    page.wait_for_selector("tr:has(.sev-critical):has-text('ecc')", timeout=30000)
    row = page.locator("tr:has(.sev-critical):has-text('ecc')").first
    assert node in row.inner_text()
    alert_id = row.get_attribute("data-alert-id")
    page.screenshot(path=str(output_dir / "alerts.png"), full_page=True)
    page.locator(f"tr[data-alert-id='{alert_id}'] [data-action=ack]").click()
    page.wait_for_function("(id) => { const r = document.querySelector(`tr[data-alert-id='${id}']`);"
                           " return r && !r.querySelector('[data-action=ack]') && /operator/.test(r.textContent); }",
                           arg=alert_id, timeout=15000)
    body = httpx.get(f"{stack.orch.url}/v1/alerts/{alert_id}", headers=auth_headers(), timeout=5).json()
    assert body["acknowledged_by"] == "operator" and body["severity"] == "critical"

    page.goto(f"{stack.dash.url}/#/")
    page.wait_for_selector(f'.card.crit[data-gpu-uuid="{target}"]', timeout=15000)
    assert "ECC" in page.inner_text(f'.card[data-gpu-uuid="{target}"]')
    page.screenshot(path=str(output_dir / "overview-alert.png"), full_page=True)
    assert page.errors == []
