"""Raw HTTP calls for tests that check the wire itself (status codes, bodies, headers)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Response:
    status: int
    headers: Any  # case-insensitive, like HTTP
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def basic(user: str, password: str = "") -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def call(
    method: str,
    url: str,
    body: Any = None,
    headers: dict | None = None,
    raw: bytes | None = None,
    timeout: float = 30,
) -> Response:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read())


def create(gw, headers: dict, options: dict | None = None) -> str:
    """Ask ``gw`` (a gateway with an ``address``) for a new cluster as the user of
    ``headers``; return its name (any answer but 201 fails the test)."""
    body = {} if options is None else {"cluster_options": options}
    r = call("POST", f"{gw.address}/api/v1/clusters/", body, headers)
    assert r.status == 201, r.body
    return r.json()["name"]
