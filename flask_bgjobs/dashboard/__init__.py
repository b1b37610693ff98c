"""The dashboard blueprint (SPEC §8): pages, a JSON API and the actions retry and cancel.

``init_app`` calls :func:`register` when ``BGJOBS_DASHBOARD`` is true. The blueprint is named
``bgjobs`` and mounted at ``BGJOBS_DASHBOARD_URL_PREFIX``; its templates live under
``templates/bgjobs/``, so a host app overrides any of them with a file of the same name in its
own ``templates/bgjobs/`` folder.

Every request under the prefix, matched or not, goes through the same three steps, so a route
added later cannot skip them:

1. access (:mod:`.auth`): HTTP Basic and/or the ``@bgjobs.dashboard_auth`` callable, else only
   a debug or testing app is served (``/metrics`` also takes ``BGJOBS_METRICS_TOKEN``);
2. CSRF (:mod:`.csrf`) on every method that is not GET, HEAD or OPTIONS;
3. security headers on the response (:func:`secure_headers`).

All data comes through the service functions and the app's state; this package has no SQL.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Response

from flask_bgjobs import config
from flask_bgjobs.dashboard import api, auth, csrf, present, views
from flask_bgjobs.errors import DatabaseBusy, JobNotFound

__all__ = ["CONTENT_SECURITY_POLICY", "create_blueprint", "register"]

#: The Prometheus endpoint, which a bearer token (BGJOBS_METRICS_TOKEN) also opens.
METRICS_ENDPOINT = "bgjobs.metrics"

#: Scripts, styles and images from the dashboard's own static files only: no inline code,
#: no ``unsafe-inline``, no CDN. The progress bars are ``<progress>`` elements and the chart
#: uses SVG attributes, so no page needs a ``style`` attribute.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Job data and logs must not linger in shared or browser caches.
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def register(app: Flask, settings: config.Settings) -> None:
    """Mount the dashboard on `app` at ``BGJOBS_DASHBOARD_URL_PREFIX``."""
    app.register_blueprint(create_blueprint(), url_prefix=settings.dashboard_url_prefix)


def create_blueprint() -> Blueprint:
    """A fresh ``bgjobs`` blueprint (one per app, so apps never share hooks)."""
    bp = Blueprint("bgjobs", __name__, template_folder="templates", static_folder="static")
    views.add_routes(bp)
    api.add_routes(bp)
    # App-level hooks that act only on dashboard requests: they also see the requests under
    # the prefix that match no route (404) or no method (405), which blueprint hooks miss.
    bp.before_app_request(_guard)
    bp.after_app_request(secure_headers)
    bp.before_request(_check_csrf)
    bp.context_processor(present.template_helpers)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(JobNotFound, _not_found)
    bp.register_error_handler(DatabaseBusy, _busy)
    return bp


def is_dashboard_request() -> bool:
    """True for a request routed to the blueprint, or an unrouted one under its prefix."""
    if request.blueprint == "bgjobs":
        return True
    if request.url_rule is not None:
        return False  # another blueprint or the host app's own route
    state = current_app.extensions.get("bgjobs")
    if state is None:
        return False
    prefix = state.settings.dashboard_url_prefix
    if prefix == "/":
        return False  # unrouted paths belong to the host app then
    path = request.path
    return path == prefix or path.startswith(prefix + "/")


def _guard() -> Response | None:
    if not is_dashboard_request():
        return None
    scraper = request.endpoint == METRICS_ENDPOINT and auth.bearer_admits()
    refused = None if scraper else auth.check_access()
    if refused is not None:
        return refused
    exc = request.routing_exception
    if isinstance(exc, HTTPException) and not isinstance(exc, RequestRedirect):
        # A 404/405 under the prefix: answer with the dashboard's own error page or JSON.
        return _http_error(exc)
    return None


def _check_csrf() -> None:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()


def secure_headers(response: Response) -> Response:
    """Add the dashboard's security headers to every response under its prefix."""
    if is_dashboard_request():
        for name, value in _SECURITY_HEADERS.items():
            response.headers[name] = value
    return response


def _http_error(exc: HTTPException) -> Response:
    extra: dict[str, Any] = {}
    allowed = getattr(exc, "allowed", None)
    if allowed is not None:  # an invalid filter: say which values exist
        extra["allowed"] = list(allowed)
    response = present.error_response(exc.code or 500, exc.description or "", **extra)
    allow = exc.get_response().headers.get("Allow") if exc.code == 405 else None
    if allow:
        response.headers["Allow"] = allow
    return response


def _not_found(exc: JobNotFound) -> Response:
    text = str(exc)
    return present.error_response(404, text[:1].upper() + text[1:] + ".")


def _busy(exc: DatabaseBusy) -> Response:
    response = present.error_response(503, str(exc))
    response.headers["Retry-After"] = "2"
    return response
