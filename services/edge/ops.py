"""The operations port: /metrics and /admin/*, never on the public port.

The public listener sits behind the internet-facing LoadBalancer; this one is meant for
Prometheus and operators only (the Kubernetes Service does not expose it, and a
NetworkPolicy opens it to the monitoring namespace). /admin/* still takes the admin key.
"""

from __future__ import annotations

from aiohttp import web

from services.edge import middleware
from services.edge.routes import ADMIN, METRICS, USAGE, admin_usage, health, metrics


def create_ops_app(public: web.Application) -> web.Application:
    """Shares the public app's metrics registry and usage ledger."""
    app = web.Application(middlewares=[middleware.errors, middleware.admin_only(public[ADMIN])])
    app[METRICS] = public[METRICS]
    app[USAGE] = public[USAGE]
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/admin/usage", admin_usage)
    return app
