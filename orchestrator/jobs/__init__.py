"""Jobs end to end on the orchestrator: admission, queue, placement, dispatch, agents' reports, node loss,
reconciliation and retention. `start(rt)` is the component entry point (see orchestrator/app.py)."""

from orchestrator.jobs.service import JobService, start

__all__ = ["JobService", "start"]
