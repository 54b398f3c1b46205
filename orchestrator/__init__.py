"""The orchestrator: ingest, cluster state, scheduling, job lifecycle, alerts, HTTP and WebSocket API."""
