"""The dashboard server: the static app, `/config.js` (where the orchestrator is), uPlot from node_modules,
`/health` and `/metrics`. It holds no data of its own: the page talks to the orchestrator directly."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Gauge

from dashboard.errors import AssetNotFound
from dashboard.settings import DashboardSettings
from services import __version__
from services.http import install_error_handlers
from services.metrics import metrics_response

log = logging.getLogger("aether.dashboard")

# The only vendor files the page loads; anything else under node_modules stays private.
VENDOR = {"uplot": ("uplot/dist", {"uPlot.esm.js", "uPlot.min.css"})}
ROUTES = ("/", "/config.js", "/health", "/metrics", "/static", "/vendor")


def config_body(s: DashboardSettings) -> dict:
    """What the page needs to know before it can talk to the orchestrator."""
    api = s.orchestrator_url
    return {
        "apiUrl": api,  # null: same host as the page, port `orchestratorPort`
        "wsUrl": (api.replace("http", "ws", 1) + "/v1/ws") if api else None,
        "orchestratorPort": s.orchestrator_port,
        "viewerToken": s.viewer_token,
        "staleAfterS": s.stale_after_s,
        "version": __version__,
    }


def _csp(s: DashboardSettings) -> str:
    if s.orchestrator_url:
        parts = urlsplit(s.orchestrator_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        ws_origin = origin.replace("http", "ws", 1)
        connect = f"'self' {origin} {ws_origin}"
    else:
        # The orchestrator's address is worked out in the page from its own host name.
        connect = "'self' http: https: ws: wss:"
    # Scripts only from here (no inline script: the token lives in localStorage, so XSS must have no way in).
    return (f"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def create_app(settings: DashboardSettings | None = None) -> FastAPI:
    s = settings or DashboardSettings.load()
    registry = CollectorRegistry()
    requests = Counter("aether_dashboard_http_requests_total", "HTTP requests served", ["route", "status"],
                       registry=registry)
    uplot_installed = Gauge("aether_dashboard_uplot_installed", "1 when uPlot is installed in node_modules",
                            registry=registry)
    index = s.static_dir / "index.html"
    if not index.is_file():
        raise FileNotFoundError(f"dashboard static files missing: {index}")
    csp = _csp(s)
    config_js = ("window.AETHER_CONFIG = Object.freeze(" + orjson.dumps(config_body(s)).decode() + ");\n").encode()

    def vendor_ok() -> bool:
        ok = all((s.node_modules_dir / d / f).is_file() for d, files in VENDOR.values() for f in files)
        uplot_installed.set(1 if ok else 0)
        return ok

    if not vendor_ok():
        log.warning("uPlot is not installed: charts will be unavailable; run `npm ci` in dashboard/",
                    extra={"node_modules": str(s.node_modules_dir)})

    app = FastAPI(title="Aether dashboard", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        path = request.url.path
        route = next((r for r in ROUTES[1:] if path == r or path.startswith(r + "/")), "/" if path == "/" else "other")
        requests.labels(route, f"{response.status_code // 100}xx").inc()
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        # Revalidate every time (ETag makes it cheap): after an upgrade the page never mixes old and new modules.
        response.headers.setdefault("Cache-Control", "no-cache")
        return response

    @app.get("/", include_in_schema=False)
    async def root() -> FileResponse:
        return FileResponse(index, media_type="text/html")

    @app.get("/config.js", include_in_schema=False)
    async def config() -> Response:
        return Response(config_js, media_type="text/javascript", headers={"Cache-Control": "no-store"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "service": "dashboard", "version": __version__, "charts": vendor_ok(),
                "orchestrator_url": s.orchestrator_url, "viewer_token_embedded": s.viewer_token is not None}

    @app.get("/metrics")
    async def metrics():
        vendor_ok()
        return metrics_response(registry)

    @app.get("/vendor/{package}/{name}", include_in_schema=False)
    async def vendor(package: str, name: str) -> FileResponse:
        entry = VENDOR.get(package)
        if entry is None or name not in entry[1]:
            raise AssetNotFound(f"no vendor file {package}/{name}")
        path = s.node_modules_dir / entry[0] / name
        if not path.is_file():
            raise AssetNotFound(f"{package} is not installed: run `npm ci` in dashboard/")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(path, media_type=media)

    app.mount("/static", StaticFiles(directory=s.static_dir), name="static")
    return app
