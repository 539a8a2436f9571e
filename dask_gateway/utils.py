"""Small helpers under the names the public dask-gateway client gives them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from . import config

__all__ = ["cancel_task", "format_template"]


def format_template(x: Any) -> Any:
    """Fill ``"{ENV_VAR}"`` placeholders from the environment (strings, also nested in
    lists and dicts); a missing variable is a ``ValueError`` naming it."""
    return config.format_template(x)


async def cancel_task(task: asyncio.Future) -> None:
    """Cancel ``task`` and wait until it has finished."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
