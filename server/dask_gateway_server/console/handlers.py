"""The web console's pages: the HTML shell that loads the console's one script and one
style sheet, those two files, the login form (authenticators with passwords) and logout.

The console itself is a script (built from ``jupyter_ext/src/console``) that uses only the
REST API with the session cookie. Every answer here carries a strict Content-Security-Policy
(no inline script or style, nothing from another origin), so text a user controls that
slipped into a page as markup would still run nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from tornado import web
from tornado.escape import xhtml_escape

from ..api.base import APIError, is_https, refuse_cross_site, set_session_cookie
from ..api.login import oauth_binding, oauth_redirect_uri
from ..auth import Authenticator, AuthError
from ..models import User

STATIC_DIR = Path(__file__).parent / "static"

#: The files the shell loads, with their types; nothing else is served from STATIC_DIR.
STATIC_FILES = {
    "console.js": "application/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}

INVALID_LOGIN = "Invalid username or password"
STALE_FORM = "This login form expired or came from another site: please log in again"

_files: dict[str, bytes | None] = {}


async def static_file(name: str) -> bytes | None:
    """A built file of the console (None: not built), read once off the event loop."""
    if name not in _files:
        path = STATIC_DIR / name

        def read() -> bytes | None:
            try:
                return path.read_bytes()
            except OSError:
                return None

        _files[name] = await asyncio.get_running_loop().run_in_executor(None, read)
    return _files[name]


async def static_url(name: str) -> str:
    """The file's URL relative to the console, with a hash of its content (a new build is
    fetched at once, never mixed with the old)."""
    body = await static_file(name)
    version = hashlib.sha256(body or b"").hexdigest()[:12]
    return f"static/{name}?v={version}"


def _page(title: str, body: str, css: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="color-scheme" content="light dark">\n'
        f"<title>{xhtml_escape(title)}</title>\n"
        '<link rel="icon" href="data:,">\n'
        f'<link rel="stylesheet" href="{xhtml_escape(css)}">\n'
        "</head>\n"
        f"{body}\n</html>\n"
    )


class ConsoleHandler(web.RequestHandler):
    """Base of the console's pages: security headers on every answer, errors as HTML."""

    @property
    def authenticator(self) -> Authenticator:
        return self.settings["authenticator"]

    @property
    def prefix(self) -> str:
        return self.settings["prefix"]

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "text/html; charset=utf-8")

    def check_xsrf_cookie(self) -> None:
        """Writes are checked by ``refuse_cross_site`` and the login form's own token."""

    async def session_user(self) -> User | None:
        auth = self.authenticator
        cookie = self.get_cookie(auth.cookie_name)
        return auth.user_from_cookie(cookie) or await auth.renew_session(cookie)

    async def message_page(self, title: str, message: str, link: str | None = None) -> None:
        """A page saying ``message`` (plain text), with a link back into the console."""
        css = await static_url("console.css")
        more = ""
        if link is not None:
            more = f'<p><a class="dg-button" href="{xhtml_escape(link)}">Open the console</a></p>'
        body = (
            '<body class="dg-page"><main class="dg-card dg-message">'
            f"<h1>{xhtml_escape(title)}</h1><p>{xhtml_escape(message)}</p>{more}"
            "</main></body>"
        )
        self.finish(_page(title, body, css))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            message = exc.message
            for k, v in exc.headers.items():
                self.set_header(k, v)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = "Internal server error, see the gateway log"
        css = f"{self.prefix}/console/static/console.css"
        body = (
            '<body class="dg-page"><main class="dg-card dg-message">'
            f"<h1>{status_code} {xhtml_escape(self._reason)}</h1>"
            f"<p>{xhtml_escape(message)}</p></main></body>"
        )
        self.finish(_page("Dask Gateway", body, css))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, web.HTTPError):
            return super().log_exception(typ, value, tb)
        self.settings["log"].error(
            "Uncaught exception in %s %s",
            self.request.method,
            self.request.path,
            exc_info=(typ, value, tb),
        )


class ShellHandler(ConsoleHandler):
    """The console's one page: a shell for the script. Without a session the browser is sent
    to log in the authenticator's way: the login form (passwords), the hub's OAuth login
    (JupyterHub), else the authenticator's own challenge (Kerberos: Negotiate)."""

    async def get(self) -> None:
        auth = self.authenticator
        user = await self.session_user()
        if user is None:
            if auth.has_password_login():
                self.redirect(f"{self.prefix}/console/login")
                return
            if auth.has_browser_login():
                url = auth.login_url(
                    self.request,
                    f"{self.prefix}/console/",
                    oauth_redirect_uri(self),
                    oauth_binding(self),
                )
                if url is not None:
                    self.redirect(url)
                    return
            try:
                user = await auth.authenticate(self.request)
            except AuthError as e:
                headers = {"WWW-Authenticate": e.challenge} if e.challenge else {}
                raise APIError(
                    e.status, f"{e.message}: log in to the gateway to use its console", headers
                ) from None
            for k, v in getattr(self.request, "auth_response_headers", {}).items():
                self.set_header(k, v)
            set_session_cookie(self, user)
        self.settings["limits"].remember(user)
        js, css = await static_url("console.js"), await static_url("console.css")
        body = (
            f'<body class="dg-page" data-user="{xhtml_escape(user.name)}" '
            f'data-admin="{"1" if user.admin else "0"}" '
            f'data-prefix="{xhtml_escape(self.prefix)}">\n'
            '<header class="dg-header"><h1 class="dg-title">Dask Gateway</h1>'
            f'<span class="dg-whoami">{xhtml_escape(user.name)}'
            f"{' (admin)' if user.admin else ''}</span>"
            '<form class="dg-logout" method="post" action="logout">'
            '<button type="submit" class="dg-button">Log out</button></form></header>\n'
            '<main id="dg-console" class="dg-main">'
            "<noscript>The console needs JavaScript.</noscript></main>\n"
            f'<script src="{xhtml_escape(js)}"></script>\n'
            "</body>"
        )
        self.finish(_page("Dask Gateway", body, css))


class ShellRedirectHandler(ConsoleHandler):
    def get(self) -> None:
        self.redirect(f"{self.prefix}/console/")


class StaticHandler(ConsoleHandler):
    """The console's script and style sheet (only those), with their types."""

    async def get(self, name: str) -> None:
        if name not in STATIC_FILES:
            raise APIError(404, f"No console file {name}")
        body = await static_file(name)
        if body is None:
            raise APIError(
                404,
                f"The console's {name} was not built: install the package from its sources "
                "with npm available (pip install . runs the build)",
            )
        self.set_header("Content-Type", STATIC_FILES[name])
        self.set_header("Cache-Control", "no-cache")
        self.finish(body)


def _login_cookie(auth: Authenticator) -> str:
    return auth.cookie_name + "-login"


class LoginHandler(ConsoleHandler):
    """The login form of authenticators with passwords. CSRF-safe: a POST from another
    site is refused (Origin, Sec-Fetch-Site), and the form carries a token that must match a
    SameSite=Strict cookie only this browser got with the form (login CSRF: nobody logs a
    victim's browser into their own account)."""

    def _token(self) -> str:
        name = _login_cookie(self.authenticator)
        token = self.get_cookie(name) or ""
        if len(token) != 32 or not token.isalnum():
            token = secrets.token_hex(16)
        self.set_cookie(
            name,
            token,
            path=f"{self.prefix}/console/login",
            httponly=True,
            samesite="Strict",
            secure=is_https(self),
        )
        return token

    async def _form(self, status: int = 200, error: str = "", notice: str = "", name: str = ""):
        self.set_status(status)
        css = await static_url("console.css")
        token = self._token()
        error_html = f'<p class="dg-error" role="alert">{xhtml_escape(error)}</p>' if error else ""
        notice_html = f'<p class="dg-notice">{xhtml_escape(notice)}</p>' if notice else ""
        body = (
            '<body class="dg-page"><main class="dg-card dg-login">'
            "<h1>Dask Gateway</h1><p>Log in to see your clusters and your usage.</p>"
            f"{notice_html}{error_html}"
            '<form method="post" action="login">'
            f'<input type="hidden" name="_xsrf" value="{token}">'
            '<label for="dg-username">Username</label>'
            '<input id="dg-username" name="username" autocomplete="username" required '
            f'autofocus value="{xhtml_escape(name)}">'
            '<label for="dg-password">Password</label>'
            '<input id="dg-password" name="password" type="password" '
            'autocomplete="current-password">'
            '<button type="submit" class="dg-button dg-primary">Log in</button>'
            "</form></main></body>"
        )
        self.finish(_page("Log in: Dask Gateway", body, css))

    async def get(self) -> None:
        if not self.authenticator.has_password_login():
            self.redirect(f"{self.prefix}/console/")
            return
        notice = "You have logged out." if self.get_query_argument("out", None) else ""
        await self._form(notice=notice)

    async def post(self) -> None:
        auth = self.authenticator
        if not auth.has_password_login():
            raise APIError(404, "This gateway's authenticator has no login form")
        try:
            refuse_cross_site(self)
        except APIError:
            await self._form(403, STALE_FORM)
            return
        sent = self.get_body_argument("_xsrf", "")
        token = self.get_cookie(_login_cookie(auth)) or ""
        if not token or not hmac.compare_digest(sent.encode(), token.encode()):
            await self._form(403, STALE_FORM)
            return
        name = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "")
        user = await auth.check_password(name, password) if name else None
        if user is None:
            self.settings["log"].info("Console login failed for user %r", name[:100])
            await self._form(401, INVALID_LOGIN, name=name[:255])
            return
        set_session_cookie(self, user, auth.login_max_age)
        self.settings["log"].info("Console login of user %s", user.name)
        self.redirect(f"{self.prefix}/console/", status=303)


class LogoutHandler(ConsoleHandler):
    """Ends the session (the gateway forgets it, the browser drops the cookie)."""

    async def post(self) -> None:
        refuse_cross_site(self)
        auth = self.authenticator
        auth.end_session(self.get_cookie(auth.cookie_name))
        self.clear_cookie(auth.cookie_name, path=self.prefix or "/")
        if auth.has_password_login():
            self.redirect(f"{self.prefix}/console/login?out=1", status=303)
            return
        await self.message_page("Logged out", "You have logged out of the gateway.", "./")


class NotFoundHandler(ConsoleHandler):
    async def prepare(self) -> None:
        raise APIError(404, "No such page in the console")
