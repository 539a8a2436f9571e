"""Where a user stands against their quotas over time (``GET /api/v1/quota``)."""

from __future__ import annotations

from ..quotas import UsageQuotas
from .base import APIError, BaseHandler, Route


class QuotaHandler(BaseHandler):
    """The caller's own quota state, or (admins only) another user's: ``?user=NAME``. A
    user the gateway does not know gets their (empty) state: names are not secrets here,
    and a 404 would tell an admin less."""

    async def get(self) -> None:
        me = self.current_user
        name = self.get_query_argument("user", None)
        quotas: UsageQuotas = self.settings["quotas"]
        if name is None or name == me.name:
            user = me
        elif not name:
            raise APIError(400, "user must be a user name, got an empty string")
        elif not me.admin:
            raise APIError(
                403, f"User {me.name} may only see their own quota: ?user= is for admins"
            )
        else:
            user = quotas.identity(name)
        state = await quotas.state(user, fresh=True)
        self.write_json(state.to_json())


ROUTES: list[Route] = [
    ("/api/v1/quota", QuotaHandler),
]
