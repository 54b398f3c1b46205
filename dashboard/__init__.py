"""The dashboard: a small server for the browser app in `static/` (plain ES modules, no build step) and its config."""
