"""The gateway's log: every line about a cluster carries its name, as text or JSON lines,
and a log that cannot be written (a full disk) never stops the gateway.

Code logging about a cluster passes ``extra=about(cluster)``; the formatters show it as
``[cluster NAME]`` (text) or as the ``cluster`` field (JSON).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any, TextIO

#: The record attribute (and JSON field) naming the cluster a line is about.
CLUSTER = "cluster"

_CLUSTER_IN_PATH = re.compile(r"/clusters/([^/?#]+)")


def about(cluster: Any) -> dict[str, str]:
    """``extra=`` for a log call about ``cluster`` (a Cluster or its name)."""
    return {CLUSTER: getattr(cluster, "name", cluster)}


def cluster_in_path(path: str) -> dict[str, str]:
    """``extra=`` for a request log line: the cluster a URL path is about, if any."""
    m = _CLUSTER_IN_PATH.search(path)
    return about(m.group(1)) if m else {}


class TextFormatter(logging.Formatter):
    """The configured format, with ``[cluster NAME]`` before the message when about one
    (whatever the format string, so a custom ``log_format`` keeps the name too)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        name = getattr(record, CLUSTER, None)
        if not name:
            return super().formatMessage(record)
        plain = record.message
        record.message = f"[cluster {name}] {plain}"
        try:
            return super().formatMessage(record)
        finally:
            record.message = plain


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and
    ``cluster`` when the line is about one; tracebacks go in ``exc_info``."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        name = getattr(record, CLUSTER, None)
        if name:
            out[CLUSTER] = name
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


class SafeStreamHandler(logging.StreamHandler):
    """A stream handler that survives an unwritable log (disk full, closed pipe).

    Each line goes to the file descriptor in one unbuffered write, so a failed write leaves
    nothing queued in a buffer and costs no time. Lines that cannot be written are dropped
    and counted, never reported on stderr (usually the same full disk); the first line
    written afterwards says how many were lost and why.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.lost = 0
        self.last_error: BaseException | None = None
        self._partial = False  # the last failed write left half a line in the file

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)  # a bug in a log call: the stdlib's report
            return
        if self.lost:
            notice = logging.LogRecord(
                record.name,
                logging.WARNING,
                __file__,
                0,
                "%d log lines were lost: the log could not be written (%s)",
                (self.lost, self.last_error),
                None,
            )
            if not self._write(self.format(notice) + self.terminator):
                self.lost += 1
                return
            self.lost = 0
        if not self._write(line):
            self.lost += 1

    def _write(self, text: str) -> bool:
        """Write ``text`` whole; False (and remember why) if the stream refuses it."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None  # not a real file (a test capturing stderr): its own write
        try:
            if fd is None:
                self.stream.write(text)
                self.stream.flush()
            else:
                # Half a line left by a write that failed is ended first: the lines after
                # it stay whole (and parse, as JSON).
                data = text.encode("utf-8", "backslashreplace")
                if self._partial:
                    data = b"\n" + data
                while data:
                    data = data[os.write(fd, data) :]
                    self._partial = bool(data)  # in the file in part, not whole (yet)
            return True
        except Exception as e:
            self.last_error = e
            return False


def logging_config(
    style: str, level: int | str, fmt: str, datefmt: str, logger: str
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the app's ``logger``: text or JSON lines on
    stderr through a SafeStreamHandler."""
    formatter = (
        {"()": f"{__name__}.JSONFormatter"}
        if style == "json"
        else {"()": f"{__name__}.TextFormatter", "format": fmt, "datefmt": datefmt}
    )
    handler = {
        "class": f"{__name__}.SafeStreamHandler",
        "formatter": "gateway",
        "level": logging.getLevelName(level) if isinstance(level, int) else level,
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "formatters": {"gateway": formatter},
        "handlers": {"gateway": handler},
        "loggers": {logger: {"level": "DEBUG", "handlers": ["gateway"]}},
        "disable_existing_loggers": False,
    }


def share_handlers(
    app_log: logging.Logger, others: tuple[str, ...] = ("dask_gateway_server", "tornado", "asyncio")
) -> None:
    """Send other loggers' lines (tornado's tracebacks, asyncio's warnings) through the
    app's handlers, so a JSON log holds JSON lines only and a full disk is handled alike.
    For the serving process only: it takes these loggers off the root logger."""
    for name in others:
        other = logging.getLogger(name)
        if other is app_log:
            continue
        for handler in app_log.handlers:
            if handler not in other.handlers:
                other.addHandler(handler)
        other.propagate = False
