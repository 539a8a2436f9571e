"""Small helpers under the names the public dask-gateway client gives them."""

from __future__ import annotations

import asyncio
import contextlib

from .config import format_template

__all__ = ["cancel_task", "format_template"]


async def cancel_task(task: asyncio.Future) -> None:
    """Cancel ``task`` and wait until it has finished."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
