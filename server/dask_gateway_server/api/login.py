"""Browser logins: the OAuth callback from the hub, and the dashboard access check that
sends a browser without credentials to log in."""

from __future__ import annotations

import secrets

from tornado import web

from ..auth import Authenticator, AuthError
from .base import (
    APIError,
    BaseHandler,
    Route,
    authenticate_handler,
    is_https,
    set_session_cookie,
)

OAUTH_STATE_MAX_AGE = 600


def _oauth_cookie_name(auth: Authenticator) -> str:
    return auth.cookie_name + "-oauth-state"


def oauth_binding(handler: web.RequestHandler) -> str:
    """This browser's login binding (a short-lived cookie only the callback receives): a
    login started in one browser cannot be finished in another (login CSRF)."""
    auth: Authenticator = handler.settings["authenticator"]
    name = _oauth_cookie_name(auth)
    binding = handler.get_cookie(name) or ""
    if len(binding) < 32 or not binding.isalnum():
        binding = secrets.token_hex(16)
    handler.set_cookie(
        name,
        binding,
        path=handler.settings["prefix"] + "/oauth_callback",
        expires_days=OAUTH_STATE_MAX_AGE / 86400,
        httponly=True,
        samesite="Lax",
        secure=is_https(handler),
    )
    return binding


def oauth_redirect_uri(handler: web.RequestHandler) -> str:
    """The callback URL of a browser login: ``oauth_redirect_uri`` when configured, else
    from the scheme and Host of the request (X-Forwarded-* headers are not trusted: behind
    a proxy that ends HTTPS, configure ``oauth_redirect_uri``)."""
    configured = getattr(handler.settings["authenticator"], "oauth_redirect_uri", "")
    if configured:
        return configured
    return (
        f"{handler.request.protocol}://{handler.request.host}"
        f"{handler.settings['prefix']}/oauth_callback"
    )


async def check_dashboard_access(handler: web.RequestHandler, cluster_name: str) -> bool:
    """Dashboards are for the cluster's owner and admins, like the API. A browser with no
    credentials is sent to log in (through the hub, with JupyterHub auth)."""
    try:
        user = await authenticate_handler(handler)
    except APIError as e:
        wants_html = "text/html" in handler.request.headers.get("Accept", "")
        login = None
        if e.status_code == 401 and wants_html and handler.request.method == "GET":
            auth: Authenticator = handler.settings["authenticator"]
            if auth.has_browser_login():
                login = auth.login_url(
                    handler.request,
                    handler.request.uri,
                    oauth_redirect_uri(handler),
                    oauth_binding(handler),
                )
        if login is None:
            raise
        handler.redirect(login)
        return False
    cluster = handler.settings["reconciler"].clusters.get(cluster_name)
    if cluster is None:
        raise APIError(404, f"Cluster {cluster_name} not found")
    if not user.can_access(cluster):
        raise APIError(403, f"User {user.name} lacks permissions to view cluster {cluster_name}")
    return True


class OAuthCallbackHandler(BaseHandler):
    """Where the hub sends a browser back after a login; starts a gateway session."""

    auth_kind = "none"

    def set_default_headers(self) -> None:
        """Redirects, not JSON, on success."""

    async def get(self) -> None:
        auth = self.authenticator
        binding_cookie = _oauth_cookie_name(auth)
        binding = self.get_cookie(binding_cookie) or ""
        try:
            user, next_url = await auth.complete_login(
                self.request, oauth_redirect_uri(self), binding
            )
        except AuthError as e:
            raise APIError(e.status, e.message) from None
        if not next_url.startswith("/") or next_url.startswith("//"):
            next_url = self.settings["prefix"] + "/"
        self.clear_cookie(binding_cookie, path=self.settings["prefix"] + "/oauth_callback")
        set_session_cookie(self, user, renewal=getattr(self.request, "session_renewal", None))
        self.redirect(next_url)


ROUTES: list[Route] = [
    ("/oauth_callback", OAuthCallbackHandler),
]
