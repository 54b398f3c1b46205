"""Carbon accounting: GPU energy integrated from telemetry (per GPU, job, tenant, cluster), emissions from a
constant or time-series carbon intensity, and carbon-aware deferral of deferrable jobs."""
