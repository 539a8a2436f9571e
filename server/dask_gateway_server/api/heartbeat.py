"""The scheduler-facing route: heartbeats, authenticated by the cluster's own token."""

from __future__ import annotations

from ..addresses import AddressMoved, AddressNotYetKnown, AddressRefused, MalformedAddress
from .base import APIError, BaseHandler, Route, token_from

_HEARTBEAT_KEYS = {
    "scheduler_address": str,
    "dashboard_address": str,
    "api_address": str,
    "count": int,
    "active_workers": list,
    "closing_workers": list,
    "closed_workers": list,
}


class HeartbeatHandler(BaseHandler):
    auth_kind = "none"

    async def post(self, name: str) -> None:
        token = token_from(self.request)
        cluster = self.reconciler.by_token.get(token) if token else None
        if cluster is None or cluster.name != name:
            raise APIError(401, "Unauthorized", {"WWW-Authenticate": "token"})
        msg = self.json_body()
        if not isinstance(msg, dict):
            raise APIError(422, "Heartbeat must be a JSON object")
        for key, kind in _HEARTBEAT_KEYS.items():
            value = msg.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise APIError(422, f"Heartbeat field {key!r} must be {kind.__name__}")
        for key in ("active_workers", "closing_workers", "closed_workers"):
            if not all(isinstance(w, str) for w in msg[key]):
                raise APIError(422, f"Heartbeat field {key!r} must list worker names")
        try:
            await self.reconciler.on_heartbeat(cluster, msg)
        except AddressRefused as e:
            raise APIError(_address_status(e), str(e)) from None
        self.set_status(200)
        self.finish()


def _address_status(error: AddressRefused) -> int:
    """422: not an address; 409: not now (a pending job) or moving set addresses; 403:
    an address that is not the scheduler's."""
    if isinstance(error, MalformedAddress):
        return 422
    if isinstance(error, (AddressNotYetKnown, AddressMoved)):
        return 409
    return 403


ROUTES: list[Route] = [
    ("/api/v1/clusters/{cluster_name}/heartbeat", HeartbeatHandler),
]
