"""Alerts: rules on the live telemetry stream with open/resolve hysteresis, an EWMA anomaly detector, storage,
publication (NATS, dashboard, webhooks) and placement exclusion of GPUs with a critical alert."""
