"""Routes about the gateway itself, with no credentials: health, version, this API's
OpenAPI document."""

from __future__ import annotations

from .. import __version__
from ..metrics import MetricsHandler
from ..openapi import openapi_spec
from .base import BaseHandler, Route


class HealthHandler(BaseHandler):
    auth_kind = "none"

    def get(self) -> None:
        self.write_json({"status": "pass"})


class VersionHandler(BaseHandler):
    auth_kind = "none"

    def get(self) -> None:
        self.write_json({"version": __version__})


class OpenAPIHandler(BaseHandler):
    """The API's OpenAPI document, so tools and people can read the wire without the code."""

    auth_kind = "none"

    def get(self) -> None:
        self.write_json(openapi_spec(self.settings["prefix"]))


ROUTES: list[Route] = [
    ("/api/health", HealthHandler),
    ("/api/version", VersionHandler),
    ("/api/openapi.json", OpenAPIHandler),
    ("/metrics", MetricsHandler),
]
