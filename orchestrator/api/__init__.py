"""HTTP and WebSocket routes of the orchestrator, one module per resource."""
