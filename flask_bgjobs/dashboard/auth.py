"""Who may open the dashboard: HTTP Basic from the config, a host callable, or neither.

- ``BGJOBS_DASHBOARD_USERNAME`` and ``_PASSWORD`` set: every request must carry them (HTTP
  Basic, compared in constant time); a missing or wrong login gets 401 and a challenge.
- A callable registered with ``@bgjobs.dashboard_auth`` (no arguments, reads
  ``flask.request``): it must return something truthy, else 403.
- Both configured: both must admit the request (each guard only ever adds a condition).
- Neither: only an app in debug or testing mode serves the dashboard; any other answers 403
  with the line below on how to configure access.

``GET <prefix>/metrics`` is also open to ``Authorization: Bearer <BGJOBS_METRICS_TOKEN>``
(`bearer_admits`), for a Prometheus scraper that has no dashboard login.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import current_app, request
from werkzeug.wrappers import Response

from flask_bgjobs.dashboard import present

REALM = "flask-bgjobs dashboard"

#: The answer of an app with no access configured that is not in debug or testing mode.
LOCKED = (
    "The flask-bgjobs dashboard is locked: set BGJOBS_DASHBOARD_USERNAME and "
    "BGJOBS_DASHBOARD_PASSWORD, or register a callable with @bgjobs.dashboard_auth "
    "(without either it is served only in debug or testing mode)."
)
UNAUTHORIZED = (
    "Log in with the user name and password of BGJOBS_DASHBOARD_USERNAME and "
    "BGJOBS_DASHBOARD_PASSWORD."
)
REFUSED = "Access refused by the @bgjobs.dashboard_auth callable of this app."


def check_access() -> Response | None:
    """``None`` to admit the current request, else the 401 or 403 response to send."""
    state = current_app.extensions["bgjobs"]
    settings = state.settings
    callback = state.registry.dashboard_auth
    user, password = settings.dashboard_username, settings.dashboard_password
    if user is not None and password is not None:
        if not _basic_matches(user, password):
            response = present.error_response(401, UNAUTHORIZED, plain=True)
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
            return response
    if callback is not None:
        if not callback():
            return present.error_response(403, REFUSED, plain=True)
    if user is None and callback is None and not (current_app.debug or current_app.testing):
        return present.error_response(403, LOCKED, plain=True)
    return None


def bearer_admits() -> bool:
    """True when the request carries ``Authorization: Bearer`` with ``BGJOBS_METRICS_TOKEN``."""
    token = current_app.extensions["bgjobs"].settings.metrics_token
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    # Digests of equal length: the comparison time says nothing about the token.
    return hmac.compare_digest(_digest(given.strip()), _digest(token))


def _basic_matches(user: str, password: str) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    # Digests of equal length, so the comparison time says nothing about either length; both
    # comparisons always run.
    user_ok = hmac.compare_digest(_digest(auth.username or ""), _digest(user))
    password_ok = hmac.compare_digest(_digest(auth.password or ""), _digest(password))
    return user_ok & password_ok


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
