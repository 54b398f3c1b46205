"""The dashboard in Chromium against the real stack: GPU cards appear and update live, charts draw, the token is
asked for once, and the page recovers by itself after the orchestrator restarts."""

from __future__ import annotations

import pytest

from tests.browser.conftest import VIEWER_TOKEN

pytestmark = pytest.mark.browser

# Per card: the numbers an operator reads; any of them moving shows the card is live.
READ_CARDS = """() => Object.fromEntries([...document.querySelectorAll('.card[data-gpu-uuid]')].map(c =>
  [c.dataset.gpuUuid, [...c.querySelectorAll('.util .big, .row .v')].map(e => e.textContent).join('|')]))"""

ALL_CHANGED = """(before) => {
  const cards = [...document.querySelectorAll('.card[data-gpu-uuid]')];
  return cards.length === Object.keys(before).length && cards.every(c =>
    [...c.querySelectorAll('.util .big, .row .v')].map(e => e.textContent).join('|') !== before[c.dataset.gpuUuid]);
}"""

CARDS_WITH_DATA = """(n) => {
  const cards = [...document.querySelectorAll('.card[data-gpu-uuid]')];
  return cards.length === n && cards.every(c => /^\\d+$/.test(c.querySelector('.util .num').textContent));
}"""


def test_gpu_cards_appear_and_update(make_stack, page, output_dir):
    stack = make_stack(embed_viewer=False)
    page.goto(stack.dash.url)

    # No token in the page's config: it asks for one, once, and keeps it.
    page.wait_for_selector("#token-dialog[open]", timeout=15000)
    page.fill("#token-input", VIEWER_TOKEN)
    page.click("#token-save")
    assert page.evaluate("localStorage.getItem('aether.token')") == VIEWER_TOKEN

    page.wait_for_function(CARDS_WITH_DATA, arg=8, timeout=20000)
    assert page.get_attribute("#conn", "data-state") == "live"
    uuids = page.eval_on_selector_all(".card[data-gpu-uuid]", "els => els.map(e => e.dataset.gpuUuid)")
    assert sorted(uuids) == sorted(stack.uuids())
    # Grouped by node: one section per node, four cards in each.
    per_node = page.eval_on_selector_all("section.node", "els => els.map(s => [s.dataset.node, s.querySelectorAll('.card[data-gpu-uuid]').length])")
    assert sorted(per_node) == sorted([[n, 4] for n in stack.nodes])

    stack.make_values_move()
    before = page.evaluate(READ_CARDS)
    page.wait_for_function(ALL_CHANGED, arg=before, timeout=15000)
    summary = page.inner_text("#summary")
    assert "8" in summary and "2 / 2" in summary
    page.screenshot(path=str(output_dir / "overview.png"), full_page=True)

    # A GPU's page: its numbers, and live charts drawn by uPlot (from the dashboard's node_modules).
    first = sorted(stack.uuids())[0]
    page.click(f'.card[data-gpu-uuid="{first}"]')
    page.wait_for_function("() => location.hash.startsWith('#/gpu/')")
    page.wait_for_selector(".chart-box .uplot canvas", timeout=15000)
    assert page.locator(".chart-box .uplot").count() == 5
    assert first in page.inner_text(".detail-head")
    page.wait_for_function("() => document.querySelectorAll('.chart-box .u-legend').length === 5")
    page.screenshot(path=str(output_dir / "gpu.png"), full_page=True)

    # A node's page: per-GPU utilisation lines and the node's cards.
    node = stack.nodes[1]
    page.goto(f"{stack.dash.url}/#/node/{node}")
    page.wait_for_function(CARDS_WITH_DATA, arg=4, timeout=10000)
    page.wait_for_selector(".chart-box .uplot canvas", timeout=10000)
    page.screenshot(path=str(output_dir / "node.png"), full_page=True)

    # The token survives a reload: the page does not ask again.
    page.reload()
    page.wait_for_function(CARDS_WITH_DATA, arg=4, timeout=15000)
    assert page.locator("#token-dialog[open]").count() == 0
    assert page.errors == []


def test_page_recovers_after_orchestrator_restart(make_stack, page, output_dir):
    stack = make_stack(embed_viewer=True)
    page.goto(stack.dash.url)
    page.wait_for_function(CARDS_WITH_DATA, arg=8, timeout=20000)
    stack.make_values_move()
    assert page.locator("#token-dialog[open]").count() == 0  # the embedded read-only token is enough to watch
    assert "read-only" in page.inner_text("#token-btn")

    stack.orch.kill()  # a crash, not a polite shutdown
    page.wait_for_selector("#conn[data-state=reconnecting]", timeout=10000)
    page.wait_for_selector("#banner:not([hidden])")
    assert "Reconnecting" in page.inner_text("#banner")
    page.screenshot(path=str(output_dir / "reconnecting.png"), full_page=False)

    frozen = page.evaluate(READ_CARDS)
    stack.restart_orchestrator()
    page.wait_for_selector("#conn[data-state=live]", timeout=30000)
    page.wait_for_selector("#banner", state="hidden")
    # Live again: every card moves on from the values it froze at.
    page.wait_for_function(ALL_CHANGED, arg=frozen, timeout=20000)
    assert page.locator(".card[data-gpu-uuid]").count() == 8
    page.screenshot(path=str(output_dir / "recovered.png"), full_page=False)
    assert page.errors == []
