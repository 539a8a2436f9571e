"""The web console, served by the gateway itself under ``{prefix}/console/``: HTML pages,
not API routes (no OpenAPI entries; the console's script uses the API like any client)."""

from __future__ import annotations

import re

from tornado import web

from ..api.base import Route
from ..api.base import url_specs as _url_specs
from .handlers import (
    LoginHandler,
    LogoutHandler,
    NotFoundHandler,
    ShellHandler,
    ShellRedirectHandler,
    StaticHandler,
)

ROUTES: list[Route] = [
    ("/console", ShellRedirectHandler),
    ("/console/", ShellHandler),
    ("/console/login", LoginHandler),
    ("/console/logout", LogoutHandler),
    ("/console/static/{file}", StaticHandler),
]


def url_specs(prefix: str) -> list[tuple[str, type[web.RequestHandler]]]:
    """The console's URL patterns under ``prefix``, and its own 404 page (with the
    console's security headers) for anything else below ``/console/``."""
    rest = re.escape(prefix.rstrip("/")) + r"/console/.*"
    return [*_url_specs(prefix, ROUTES), (rest, NotFoundHandler)]
