"""CSRF protection for the dashboard's actions, without a new dependency.

A random secret lives in the Flask session (``_bgjobs_csrf``); forms carry it signed with
itsdangerous (salted for the dashboard, timestamped) in the ``bgjobs_csrf`` field, scripts in
the ``X-BgJobs-CSRF`` header. A POST is refused when

- the browser says it comes from another site (``Sec-Fetch-Site``, else ``Origin``) → 403;
- the token is missing, forged, signed for something else, expired, or belongs to another
  session → 400 (`CSRFError`, a `BadRequest`, as in Flask-WTF).

Why this instead of Flask-WTF's ``CSRFProtect``: that one protects the whole host app and
would change its behaviour; this one checks only the dashboard, with what Flask already ships
(itsdangerous, ``hmac.compare_digest``). The signature ties a token to this app's
``SECRET_KEY`` and to the dashboard (a token the host app mints for its own forms, even from the
same session, is not accepted here), and bounds its age. Tokens need a session, so the actions
need ``SECRET_KEY``; without one the pages still show and the action buttons are replaced by a
note saying so.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import current_app, request, session
from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer
from werkzeug.exceptions import BadRequest, Forbidden

SESSION_KEY = "_bgjobs_csrf"
FIELD = "bgjobs_csrf"
HEADER = "X-BgJobs-CSRF"
#: Seconds a token stays valid: a dashboard left open over a working day still works.
MAX_AGE = 24 * 3600
_SALT = "flask-bgjobs.dashboard.csrf"

NO_SECRET_KEY = (
    "Dashboard actions need a session: set the app's SECRET_KEY (e.g. FLASK_SECRET_KEY with "
    "app.config.from_prefixed_env())."
)


class CSRFError(BadRequest):
    """Raised when a dashboard action comes without a valid CSRF token of this session."""


def enabled() -> bool:
    """True when the app can keep a session (it has a ``SECRET_KEY``)."""
    return bool(current_app.secret_key)


def token() -> str:
    """The signed token for forms of this request (the session's secret, made on first use)."""
    if not enabled():
        raise RuntimeError(NO_SECRET_KEY)
    # Not cached in `g`: an app context can outlive a request (tests, CLI) and one session's
    # token must never be handed to another. Signing is cheap; every signed copy is valid.
    raw = session.get(SESSION_KEY)
    if not isinstance(raw, str) or not raw:
        raw = session[SESSION_KEY] = secrets.token_urlsafe(32)
    return _serializer().dumps(raw)


def protect() -> None:
    """Refuse the current request unless it is same-origin and carries this session's token."""
    _check_origin()
    if not enabled():
        raise CSRFError(NO_SECRET_KEY)
    sent = request.headers.get(HEADER) or request.form.get(FIELD)
    if not sent:
        raise CSRFError("The CSRF token is missing; reload the page and try again.")
    try:
        raw_sent = _serializer().loads(sent, max_age=MAX_AGE)
    except SignatureExpired:
        raise CSRFError("The CSRF token has expired; reload the page and try again.")
    except BadData:
        raise CSRFError("The CSRF token is invalid; reload the page and try again.")
    raw = session.get(SESSION_KEY)
    if (
        not isinstance(raw, str)
        or not isinstance(raw_sent, str)
        or not hmac.compare_digest(raw_sent.encode("utf-8"), raw.encode("utf-8"))
    ):
        raise CSRFError(
            "The CSRF token does not belong to this session; reload the page and try again."
        )


def _check_origin() -> None:
    # Browsers say where a request comes from; a cross-site form post is refused before the
    # token is even looked at. Clients that send neither header (curl) rely on the token alone.
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise Forbidden(f"Cross-site request refused (Sec-Fetch-Site: {site[:40]}).")
        return
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower():
        raise Forbidden("Cross-origin request refused: the Origin header names another site.")


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=_SALT)  # type: ignore[arg-type]
