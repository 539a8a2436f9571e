"""Start-up progress of a new cluster: its phases as they happen, from the events route.

``new_cluster()`` waits on ``GET /api/v1/clusters/{name}?wait`` for the cluster to run. Beside
that wait, ``StartProgress`` long-polls the cluster's events and shows each start-up phase
(submitted, queued in a batch queue and why, starting, running): in Jupyter as one display
that updates in place, elsewhere as a line per phase on stderr. It never delays the start:
once the cluster runs, the reader is cancelled and one last short read (run while the client
connects to the scheduler) shows what it missed. Against a server that keeps no events it
shows nothing. Config ``gateway.progress``: true, false, or "auto" (on when stderr is a
terminal or in a Jupyter kernel).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from html import escape
from typing import Any, Protocol, TextIO

from .config import progress_setting
from .errors import GatewayUnsupportedError
from .events import LIFECYCLE_KINDS, ClusterEvent, EventPage

__all__ = ["StartProgress", "progress_mode", "start_progress"]

logger = logging.getLogger(__name__)

#: Seconds the events route holds each long-poll of the reader.
POLL_WAIT = 30
#: Longest the last read after the start may take (it runs while the scheduler is connected).
FLUSH_TIMEOUT = 5.0
#: Seconds between refreshes of the elapsed time of the current phase in Jupyter.
TICK = 1.0

#: ``fetch(after, wait)``: one answer of the events route of the cluster being started.
Fetch = Callable[[int, float], Awaitable[EventPage]]


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (never imports IPython: a kernel has already)."""
    if "IPython" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_mode() -> str | None:
    """How to show start-up progress now: "jupyter", "text" (stderr), or None (not at all)."""
    setting = progress_setting()
    if setting is False:
        return None
    if in_jupyter_kernel():
        return "jupyter"
    if setting is True or _stderr_is_tty():
        return "text"
    return None


def _seconds(delta: float) -> str:
    return f"{max(delta, 0):.0f} s"


class _View(Protocol):
    def show(self, lines: list[str], live: str | None, ended: bool) -> None: ...


class _TextView:
    """A line per phase on stderr (only new lines are written)."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream
        self._written = 0

    def show(self, lines: list[str], live: str | None, ended: bool) -> None:
        stream = self._stream or sys.stderr
        for line in lines[self._written :]:
            print(f"dask-gateway: {line}", file=stream, flush=True)
        self._written = len(lines)


class _JupyterView:
    """One output that updates in place: the phases so far, the current one with its age."""

    def __init__(self) -> None:
        self._handle: Any = None

    def show(self, lines: list[str], live: str | None, ended: bool) -> None:
        shown = lines if live is None else [*lines[:-1], live]
        items = "".join(f"<li>{escape(line)}</li>" for line in shown)
        bundle = {
            "text/plain": "".join(line + "\n" for line in shown),
            "text/html": f"<ul class='dgw-start-progress' style='margin: 0'>{items}</ul>",
        }
        try:
            if self._handle is None:
                from IPython.display import display

                self._handle = display(bundle, raw=True, display_id=True)
            else:
                self._handle.update(bundle, raw=True)
        except Exception:  # a display must never break the start
            logger.debug("Could not show the start-up progress", exc_info=True)


class StartProgress:
    """Shows a starting cluster's phases while ``new_cluster()`` waits for it to run."""

    def __init__(self, name: str, fetch: Fetch, view: _View, tick: bool = False):
        self.name = name
        self._fetch = fetch
        self._view = view
        self._after = 0
        self._lines: list[str] = []
        self._t0: datetime | None = None
        self._current: ClusterEvent | None = None
        self._queued_since: datetime | None = None
        self._running = False
        self._unsupported = False
        self._ended = False
        self._reader = asyncio.ensure_future(self._follow())
        self._ticker = asyncio.ensure_future(self._tick()) if tick else None

    # -- reading

    async def _read(self, wait: float) -> bool:
        """Read and show the next events; False when there is nothing more to read."""
        try:
            page = await self._fetch(self._after, wait)
        except GatewayUnsupportedError:
            self._unsupported = True  # the public server: no progress, and no noise
            return False
        for event in page.events:
            self._add(event)
        self._after = max(self._after, page.cursor)
        if self._lines:
            self._render()
        return not (page.done or self._running)

    async def _follow(self) -> None:
        try:
            while await self._read(POLL_WAIT):
                pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # progress is a courtesy: the start goes on without it
            logger.debug("Stopped following the start of %s: %s", self.name, exc)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            if self._lines and self._queued_since is not None:
                self._render()

    # -- formatting

    def _add(self, event: ClusterEvent) -> None:
        if event.kind not in LIFECYCLE_KINDS:
            return
        if self._t0 is None:
            self._t0 = event.time
        text = f"cluster {self.name}: {event.message or event.kind}"
        notes = []
        if self._lines:
            notes.append(f"+{_seconds((event.time - self._t0).total_seconds())}")
        if self._queued_since is not None and event.kind != "queued":
            waited = (event.time - self._queued_since).total_seconds()
            notes.append(f"after {_seconds(waited)} in the queue")
            self._queued_since = None
        if event.kind == "queued" and self._queued_since is None:
            self._queued_since = event.time
        if notes:
            text += f" ({', '.join(notes)})"
        self._lines.append(text)
        self._current = event
        if event.kind == "running":
            self._running = True

    def _live(self) -> str | None:
        """The current phase with its age, while queued (the age is what changes)."""
        if self._current is None or self._queued_since is None or not self._lines:
            return None
        age = time.time() - self._queued_since.timestamp()
        return f"{self._lines[-1]}: queued for {_seconds(age)}"

    def _render(self) -> None:
        self._view.show(list(self._lines), None if self._ended else self._live(), self._ended)

    # -- ending

    def _stop_tasks(self) -> None:
        for task in (self._reader, self._ticker):
            if task is not None and not task.done():
                task.cancel()

    def abort(self, history: Iterable[ClusterEvent] = ()) -> None:
        """The start failed or was interrupted: stop reading, and show what the reader had
        not shown yet of ``history`` (the events the error was made of: its end)."""
        self._stop_tasks()
        if not self._unsupported:
            for event in history:
                if event.id > self._after:
                    self._add(event)
                    self._after = event.id
        self._ended = True
        if self._lines:
            self._render()

    async def finish(self) -> None:
        """The cluster runs: show what the reader missed, then the running phase. Runs
        beside the connection to the scheduler; never raises."""
        self._stop_tasks()
        await asyncio.gather(self._reader, return_exceptions=True)
        try:
            if not self._unsupported and not self._running:
                await asyncio.wait_for(self._read(0), FLUSH_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("Could not read the last events of %s: %s", self.name, exc)
        if self._unsupported:
            return
        if not self._running and self._lines:
            self._queued_since = None
            self._lines.append(f"cluster {self.name}: running")
        self._ended = True
        if self._lines:
            self._render()


def start_progress(name: str, fetch: Fetch) -> StartProgress | None:
    """A ``StartProgress`` for the cluster being started, or None when progress is off
    (config ``gateway.progress``). Call on the loop that runs the start."""
    mode = progress_mode()
    if mode is None:
        return None
    if mode == "jupyter":
        return StartProgress(name, fetch, _JupyterView(), tick=True)
    return StartProgress(name, fetch, _TextView())
