"""``GET dask-gateway/stream``: the gateway's events, pushed to every open tab.

One upstream long-poll per Jupyter server (per ``all`` variant) on the gateway's
``GET /api/v1/events`` (``Gateway.user_events``) feeds every subscriber: it starts with the
first tab and stops when the last one leaves, so the gateway's load does not grow with the
number of tabs. Each event goes to the browser as Server-Sent Events::

    event: cluster
    data: {"cluster": NAME, "kind": KIND, "worker": NAME|null, "time": MS}

and the browser refreshes that cluster's row. ``event: ready`` comes first (once the upstream
cursor is known: a full list read after it misses nothing), ``event: down``/``up`` when the
gateway cannot be reached and is back (the browser polls meanwhile), ``event: resync`` when a
tab fell behind and events were dropped for it. A gateway without the events route (the public
one) answers 501 before the stream starts: the browser then polls as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from tornado import web
from tornado.iostream import StreamClosedError

from dask_gateway import Gateway
from dask_gateway.events import EventPage

from .errors import translate_error

#: How long one upstream long-poll waits for an event (the gateway holds up to 60 s).
UPSTREAM_WAIT = 30.0
#: A comment line this often keeps idle connections (and proxies) open, and finds the closed
#: ones (the server learns that a tab left only when a write to it fails).
KEEPALIVE = 5.0
#: Events queued for a tab that does not read them; beyond this it is told to resync.
QUEUE_MAX = 500
#: Retry delays after the gateway failed, in seconds (the last repeats).
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
#: The first read starts this far back (clock skew between this server and the gateway):
#: events of that window are not sent, only used to find the cursor.
SINCE_SLACK_MS = 120_000

#: A message for the subscribers: (SSE event name, data).
Message = tuple[str, dict[str, Any]]


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event (the data is one JSON line)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class EventStream:
    """The upstream long-poll of one Jupyter server, shared by its subscribers (tabs)."""

    #: Pollers started by this process, every variant: the stream's ``ready`` says which one
    #: a tab shares (a test counts them; nothing else depends on it).
    started = 0

    def __init__(
        self,
        gateway: Callable[[], Gateway],
        all_users: bool,
        log: logging.Logger,
    ):
        self._gateway = gateway
        self.all_users = all_users
        self.log = log
        self.subscribers: set[asyncio.Queue[Message]] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[int] | None = None
        self.poller = 0
        self.healthy = True

    async def subscribe(self) -> asyncio.Queue[Message]:
        """A queue of messages for a new tab; starts the poller if it is the first. Raises
        what the first read raised (the gateway refused, lacks the route, is unreachable)."""
        if self._task is None or self._task.done():
            EventStream.started += 1
            self.poller = EventStream.started
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.ensure_future(self._run(self._ready))
            self.log.info("Dask Gateway event stream: poller %d started", self.poller)
        ready = self._ready
        assert ready is not None
        await asyncio.shield(ready)
        queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_MAX)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Message]) -> None:
        """A tab left; the poller stops with the last one."""
        self.subscribers.discard(queue)
        if not self.subscribers:
            self.stop()

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self.log.info("Dask Gateway event stream: poller %d stopped", self.poller)
        self._task = None

    def _publish(self, message: Message) -> None:
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # a tab that stopped reading: it re-reads the list
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(("resync", {}))

    async def _page(self, **kwargs: Any) -> EventPage:
        # The coroutine behind the public ``Gateway.user_events`` (as GatewayManager does:
        # its real type, and no guessing of the running loop by the client).
        return await self._gateway()._user_events(all_users=self.all_users, **kwargs)

    async def _cursor(self) -> int:
        """The newest event id (of the last few minutes; older ones are in any list read
        after this): where following starts."""
        since = int(time.time() * 1000) - SINCE_SLACK_MS
        page = await self._page(since=since, wait=0)
        cursor = page.cursor
        while len(page.events) >= 1000:  # the route's page size: read on to the end
            page = await self._page(after=cursor, wait=0)
            if page.cursor <= cursor:
                break
            cursor = page.cursor
        return cursor

    async def _run(self, ready: asyncio.Future[int]) -> None:
        try:
            cursor = await self._cursor()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except Exception as e:
            ready.set_exception(e)
            ready.exception()  # retrieved: no "never retrieved" warning if nobody waits
            self._task = None
            return
        ready.set_result(cursor)
        failures = 0
        while True:
            try:
                page = await self._page(after=cursor, wait=UPSTREAM_WAIT)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                err = translate_error(e, None)
                message = err.message if err is not None else f"{type(e).__name__}: {e}"
                if err is None:
                    self.log.warning("Dask Gateway event stream: %s", message, exc_info=e)
                if self.healthy:
                    self.healthy = False
                    self._publish(("down", {"message": message}))
                await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1
                continue
            failures = 0
            if not self.healthy:
                self.healthy = True
                # The cursor held, so no event was lost; the tabs stop polling.
                self._publish(("up", {}))
            for event in page.events:
                self._publish(
                    (
                        "cluster",
                        {
                            "cluster": event.cluster,
                            "kind": event.kind,
                            "worker": event.worker,
                            "time": int(event.time.timestamp() * 1000),
                        },
                    )
                )
            cursor = max(cursor, page.cursor)
            if not self.subscribers:  # the tabs that started it left while it waited
                self.log.info("Dask Gateway event stream: poller %d stopped", self.poller)
                self._task = None
                return


class StreamHub:
    """The streams of one Jupyter server: its user's, and (for an admin who asked) everyone's."""

    def __init__(self, gateway: Callable[[], Gateway], log: logging.Logger):
        self.streams = {
            False: EventStream(gateway, False, log),
            True: EventStream(gateway, True, log),
        }

    def close(self) -> None:
        for stream in self.streams.values():
            stream.stop()


class StreamHandlerMixin(web.RequestHandler):
    """The SSE route: subscribe, write the stream's messages until the tab leaves."""

    _closed: asyncio.Future[None] | None = None

    def on_connection_close(self) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        super().on_connection_close()

    async def stream_events(
        self,
        hub: StreamHub,
        all_users: bool,
        fail: Callable[[int, str], None],
        address: str | None,
    ) -> None:
        closed = self._closed = asyncio.get_running_loop().create_future()
        stream = hub.streams[all_users]
        try:
            queue = await stream.subscribe()
        except Exception as e:
            err = translate_error(e, address)
            if err is None:
                raise
            fail(err.status, err.message)
            return
        try:
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
            self.write(b"retry: 3000\n\n")
            ready = {"poller": stream.poller, "all": all_users, "healthy": stream.healthy}
            self.write(sse("ready", ready))
            await self.flush()
            while not closed.done():
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getting, closed}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED
                )
                if getting in done:
                    event, data = getting.result()
                    self.write(sse(event, data))
                else:
                    getting.cancel()
                    if closed.done():
                        break
                    self.write(b": keepalive\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            stream.unsubscribe(queue)
        if not self._finished and not closed.done():
            self.finish()
