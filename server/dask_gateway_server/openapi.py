"""The REST API as an OpenAPI 3.1 document: the one description of the wire.

The gateway serves it at ``{prefix}/api/openapi.json`` and ``python -m
dask_gateway_server.docs`` renders ``docs/api.md`` from it, so the reference cannot drift
from what clients are told; ``tests/test_openapi.py`` checks it against a real gateway.
"""

from __future__ import annotations

import copy
from typing import Any

from . import __version__
from .events import KINDS

_ERROR = {"$ref": "#/components/responses/Error"}

_CLUSTER_NAME = {
    "name": "cluster_name",
    "in": "path",
    "required": True,
    "description": "The cluster's name, as returned by `POST /api/v1/clusters/`.",
    "schema": {"type": "string"},
}


def _query(name: str, description: str, schema: dict) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_EVENT_QUERY = [
    _query(
        "after",
        "A cursor: only events with an id above it (the `cursor` of the previous answer).",
        {"type": "integer", "minimum": 0, "default": 0},
    ),
    _query(
        "since",
        "Only events at or after this time: milliseconds since the epoch, or an ISO 8601 "
        "time (UTC unless it says otherwise).",
        {"type": "string"},
    ),
    _query(
        "limit",
        "At most this many events (the oldest first).",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000},
    ),
    _query(
        "wait",
        "Long-poll: when no event matches yet, hold the answer until one is recorded, "
        "the cluster ends, or this many seconds pass.",
        {"type": "number", "minimum": 0, "maximum": 60, "default": 0},
    ),
]


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict, description: str) -> dict:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


#: The numbers of a usage row and of its total.
_USAGE_FIGURES: dict[str, Any] = {
    "clusters": {
        "type": "integer",
        "minimum": 0,
        "description": "Clusters with some use in the row.",
    },
    "core_seconds": {"type": "number", "description": "Cores × seconds (3 decimals)."},
    "memory_byte_seconds": {"type": "number", "description": "Bytes × seconds (3 decimals)."},
    "core_hours": {"type": "number", "description": "Cores × hours (6 decimals)."},
    "memory_gib_hours": {"type": "number", "description": "GiB × hours (6 decimals)."},
}

_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "dask-gateway-ng REST API",
        "version": __version__,
        "description": (
            "The HTTP API of the gateway, wire-compatible with the public dask-gateway. "
            "Requests and responses are JSON. Every error a client can cause is answered "
            'with a 4xx status and a JSON body `{"error": message}`. Requests without '
            "credentials get a 401 whose `WWW-Authenticate` header names the scheme the "
            "gateway's authenticator expects (`Basic`, `Negotiate` or `jupyterhub`); after "
            "a successful login the gateway sets a session cookie (`dask-gateway-session`) "
            "that later requests may send instead (for reads; a write authenticated by the "
            "cookie alone also needs the header `X-Dask-Gateway-Client`, else it gets the "
            "401, and writes a browser sends from another site are refused with a 403). "
            "With JupyterHub auth, any route that "
            "needs credentials answers 503 when the hub is unreachable and 502 when it "
            "answers wrongly."
        ),
    },
    "servers": [{"url": "/", "description": "The gateway's public address (with its prefix)."}],
    "tags": [
        {"name": "server", "description": "Health, version and this document; no credentials."},
        {
            "name": "clusters",
            "description": "What users do: options, create, list, scale, adapt, stop.",
        },
        {
            "name": "usage",
            "description": "Who used how much: core-hours and memory GiB-hours over time.",
        },
        {"name": "internal", "description": "Called by schedulers and by the hub, not by users."},
    ],
    "security": [{"basic": []}, {"kerberos": []}, {"jupyterhub": []}, {"session": []}],
    "paths": {
        "/api/health": {
            "get": {
                "tags": ["server"],
                "operationId": "health",
                "summary": "Is the gateway up?",
                "security": [],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Health"}, "The gateway is up."),
                },
            },
        },
        "/api/version": {
            "get": {
                "tags": ["server"],
                "operationId": "version",
                "summary": "The gateway's version.",
                "security": [],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Version"}, "The version."),
                },
            },
        },
        "/api/openapi.json": {
            "get": {
                "tags": ["server"],
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {
                    "200": _json(
                        {"type": "object", "required": ["openapi", "paths"]},
                        "The OpenAPI document, with `servers` set to this gateway's prefix.",
                    ),
                },
            },
        },
        "/metrics": {
            "get": {
                "tags": ["server"],
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format).",
                "description": "Clusters and workers by status, request counts and latency by "
                "route and status code, event-loop lag and reconcile-queue "
                "waits, client connections to schedulers handed off or tunnelled "
                "(and the bytes tunnelled). Counts only: no user or cluster names.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Metrics in the Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                },
            },
        },
        "/api/v1/options": {
            "get": {
                "tags": ["clusters"],
                "operationId": "getOptions",
                "summary": "The options this user may set on a new cluster.",
                "description": "The form the gateway's `Backend.cluster_options` describes, "
                "in declaration order. May differ per user.",
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/OptionsSpec"}, "The option fields."
                    ),
                    "401": _ERROR,
                    "500": _ERROR,
                },
            },
        },
        "/api/v1/clusters/": {
            "get": {
                "tags": ["clusters"],
                "operationId": "listClusters",
                "summary": "The user's clusters, by name.",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "description": "Comma-separated statuses to include (e.g. "
                        "`running,pending`). Without it: the active clusters "
                        "(pending, running, stopping).",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "all",
                        "in": "query",
                        "required": False,
                        "description": "`1`: every user's clusters, each with its `username` "
                        "(admins only; others get a 403).",
                        "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "additionalProperties": {"$ref": "#/components/schemas/Cluster"},
                        },
                        "A map from cluster name to cluster.",
                    ),
                    "401": _ERROR,
                    "403": _ERROR,
                    "422": _ERROR,
                },
            },
            "post": {
                "tags": ["clusters"],
                "operationId": "createCluster",
                "summary": "Ask for a new cluster.",
                "description": "Answers at once; the cluster starts in the background (poll "
                "`GET /api/v1/clusters/{cluster_name}?wait=1`). Options not "
                "given take their defaults. Refused with 422 when an option is "
                "invalid or the user's limits (`UserLimits`) would be exceeded, and with "
                "429 (and `Retry-After`: seconds until the period ends) when a quota over "
                "time (`UsageQuotas`) it would count towards is used up. From "
                "`UsageQuotas.warn_at` of a quota on, the answer has the header "
                "`X-Dask-Gateway-Warning` (percent-encoded UTF-8) saying so.",
                "requestBody": _body(
                    {"$ref": "#/components/schemas/NewCluster"}, "The cluster's options."
                ),
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}},
                            "additionalProperties": False,
                        },
                        "The new cluster's name.",
                    ),
                    "400": _ERROR,
                    "401": _ERROR,
                    "422": _ERROR,
                    "429": _ERROR,
                },
            },
        },
        "/api/v1/clusters/{cluster_name}": {
            "parameters": [_CLUSTER_NAME],
            "get": {
                "tags": ["clusters"],
                "operationId": "getCluster",
                "summary": "One cluster.",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "`1`: long-poll, answering when the cluster runs or has "
                        "ended, or after 20 seconds.",
                        "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                    },
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Cluster"}, "The cluster."),
                    "401": _ERROR,
                    "403": _ERROR,
                    "404": _ERROR,
                },
            },
            "delete": {
                "tags": ["clusters"],
                "operationId": "stopCluster",
                "summary": "Stop a cluster.",
                "description": "Idempotent: an unknown or already stopped cluster also "
                "answers 204. The cluster's own scheduler may call it with "
                "`Authorization: token <cluster token>` (idle timeout), adding "
                "`?reason=idle` or `?reason=orphan` for the cluster's events (other "
                "values, and the argument from anyone else, are ignored).",
                "security": [
                    {"basic": []},
                    {"kerberos": []},
                    {"jupyterhub": []},
                    {"session": []},
                    {"clusterToken": []},
                ],
                "responses": {
                    "204": {"description": "Stopping (or already stopped)."},
                    "401": _ERROR,
                    "403": _ERROR,
                },
            },
        },
        "/api/v1/clusters/{cluster_name}/scale": {
            "parameters": [_CLUSTER_NAME],
            "post": {
                "tags": ["clusters"],
                "operationId": "scaleCluster",
                "summary": "Set the number of workers (turns adaptive scaling off).",
                "description": "A count over the cluster's `cluster_max_workers` is lowered "
                "to it, with `ok: false` and a message the client shows as a "
                "warning. A count the user's limits don't allow is a 422, and so "
                "is one above 2147483647 (2**31 - 1) once lowered. Scaling up (above "
                "the current count) while a quota over time it counts towards is used "
                "up is a 429 with `Retry-After`; scaling down is always allowed. Near a "
                "quota the answer has the header `X-Dask-Gateway-Warning`.",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["count"],
                        "properties": {"count": {"type": "integer", "minimum": 0}},
                    },
                    "How many workers.",
                ),
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/ScaleResult"}, "Accepted, maybe lowered."
                    ),
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                    "404": _ERROR,
                    "409": _ERROR,
                    "422": _ERROR,
                    "429": _ERROR,
                },
            },
        },
        "/api/v1/clusters/{cluster_name}/adapt": {
            "parameters": [_CLUSTER_NAME],
            "post": {
                "tags": ["clusters"],
                "operationId": "adaptCluster",
                "summary": "Let the scheduler scale between minimum and maximum workers.",
                "description": "Bounds beyond the cluster's or the user's limits are lowered, "
                "with `ok: false` and a message; bounds still above 2147483647 "
                "(2**31 - 1) after that are a 422. `active: false` stops "
                "adapting and keeps the current workers. While a quota over time is used "
                "up the maximum is lowered to the current count (`ok: false`); near a "
                "quota the answer has the header `X-Dask-Gateway-Warning`.",
                "requestBody": _body(
                    {
                        "type": "object",
                        "properties": {
                            "minimum": {"type": ["integer", "null"], "minimum": 0},
                            "maximum": {"type": ["integer", "null"], "minimum": 0},
                            "active": {"type": "boolean", "default": True},
                        },
                    },
                    "The bounds (null: no bound).",
                ),
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/ScaleResult"}, "Accepted, maybe lowered."
                    ),
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                    "404": _ERROR,
                    "409": _ERROR,
                    "422": _ERROR,
                },
            },
        },
        "/api/v1/clusters/{cluster_name}/workers": {
            "parameters": [_CLUSTER_NAME],
            "get": {
                "tags": ["clusters"],
                "operationId": "clusterWorkers",
                "summary": "Running workers and their resources (not in the public dask-gateway).",
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/Workers"},
                        "Workers the scheduler reported, and what they hold.",
                    ),
                    "401": _ERROR,
                    "403": _ERROR,
                    "404": _ERROR,
                },
            },
        },
        "/api/v1/clusters/{cluster_name}/events": {
            "parameters": [_CLUSTER_NAME],
            "get": {
                "tags": ["clusters"],
                "operationId": "clusterEvents",
                "summary": "What happened to a cluster (not in the public dask-gateway).",
                "description": "Its history, oldest first: created, queued (with the batch "
                "system's reason), started, running, scaled, workers started, joined, left or "
                "failed (with why and the end of their log), stop requested (by whom, or "
                "why), stopped or failed (the reason in one sentence, the detail after). "
                "For the cluster's owner and admins, also once it stopped or failed, until "
                "`DaskGateway.events_max_age` (default 7 days) after it ended.",
                "parameters": _EVENT_QUERY,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Events"}, "The events."),
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                    "404": _ERROR,
                },
            },
        },
        "/api/v1/clusters/{cluster_name}/logs": {
            "parameters": [_CLUSTER_NAME],
            "get": {
                "tags": ["clusters"],
                "operationId": "clusterLogs",
                "summary": "The logs of a cluster's scheduler and workers (not in the public "
                "dask-gateway).",
                "description": "For the cluster's owner and admins; stopped and failed clusters "
                "too, until the gateway's retention (`DaskGateway.events_max_age`) removes "
                "them. Live while the cluster runs; once it stopped, the copy the gateway "
                "kept (`DaskGateway.cluster_log_max_bytes` of each log, the newest). Without "
                "`component`: every log, the scheduler first, then the workers by start "
                "time. With `component`: that log, with the byte positions to go on from "
                "(`offset`, long-polled with `wait`), or with `follow=1` a `text/plain` "
                "stream of it that writes new lines as they are written and ends once the "
                "cluster has ended and all is sent. Any answer holds at most "
                "`cluster_log_max_bytes` of a log: the newest, from a line start.",
                "parameters": [
                    {
                        "name": "component",
                        "in": "query",
                        "description": "`scheduler` or `worker:NAME`.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "tail",
                        "in": "query",
                        "description": "Only the last lines of each log.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100000},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "description": "With `component`: only the bytes from this position "
                        "(the `offset` of a previous answer); before the oldest kept byte: "
                        "from that one.",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "With `component` and `offset`: seconds to hold the "
                        "request until the log grows past `offset` or the cluster ends.",
                        "schema": {"type": "number", "minimum": 0, "maximum": 60},
                    },
                    {
                        "name": "follow",
                        "in": "query",
                        "description": "With `component`: `1` streams the log as text.",
                        "schema": {"type": "integer", "enum": [0, 1]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The logs (JSON), or with `follow=1` the log as a "
                        "stream of text.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Logs"},
                            },
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                    "404": _ERROR,
                },
            },
        },
        "/api/v1/events": {
            "get": {
                "tags": ["clusters"],
                "operationId": "userEvents",
                "summary": "The events of every cluster of the user (not in the public "
                "dask-gateway).",
                "description": "As for one cluster, each event also naming its `cluster` and "
                "`user`; `done` is always false (more clusters may come).",
                "parameters": [
                    *_EVENT_QUERY,
                    _query(
                        "all",
                        "`1`: every user's events (admins only).",
                        {"type": "string", "enum": ["0", "1", "true", "false"]},
                    ),
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Events"}, "The events."),
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                },
            },
        },
        "/api/v1/usage": {
            "get": {
                "tags": ["usage"],
                "operationId": "getUsage",
                "summary": "Core-seconds and memory byte-seconds by user, group, cluster or day "
                "(not in the public dask-gateway).",
                "description": "Computed from the recorded start and stop times of every "
                "scheduler and worker, each clipped to [`since`, `until`); one still running "
                "counts up to now. A user gets their own usage; an admin everyone's (or one "
                "user's with `user`). With `by=group` a cluster counts in each of its owner's "
                "groups (at its creation), so the rows may add up to more than `total`, which "
                "counts every cluster of the query once, over every page. As CSV "
                "(`format=csv` or `Accept: text/csv`): the rows with a header row, the same "
                "columns and numbers (a cluster's groups joined with a space; a name starting "
                "with `=`, `+`, `-` or `@` gets a leading `'` so spreadsheets do not run it), "
                "as an attachment; the next page's offset in `X-Dask-Gateway-Next-Offset`.",
                "parameters": [
                    _query(
                        "since",
                        "The range's start: milliseconds since the epoch, or an ISO 8601 date or "
                        "time (UTC unless it says otherwise). Default: the start of the current "
                        "quota period (a calendar month unless configured).",
                        {"type": "string"},
                    ),
                    _query(
                        "until",
                        "The range's end (excluded), as `since`. Default: now.",
                        {"type": "string"},
                    ),
                    _query(
                        "by",
                        "One row per user, per group, per cluster, or per UTC day of the range "
                        "(at most 3660 days).",
                        {"enum": ["user", "group", "cluster", "day"], "default": "user"},
                    ),
                    _query(
                        "user",
                        "Only this user's clusters (a user may name only themselves).",
                        {"type": "string"},
                    ),
                    _query(
                        "group",
                        "Only the clusters created for a member of this group.",
                        {"type": "string"},
                    ),
                    _query(
                        "format",
                        "`csv` for a spreadsheet (also chosen by `Accept: text/csv`).",
                        {"enum": ["json", "csv"], "default": "json"},
                    ),
                    _query(
                        "limit",
                        "At most this many rows.",
                        {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
                    ),
                    _query(
                        "offset",
                        "Skip this many rows (the previous answer's `next_offset`).",
                        {"type": "integer", "minimum": 0, "default": 0},
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "The usage.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Usage"},
                            },
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                },
            },
        },
        "/api/v1/quota": {
            "get": {
                "tags": ["clusters"],
                "operationId": "getQuota",
                "summary": "The user's use this period against their quotas over time (not "
                "in the public dask-gateway).",
                "description": "The period is `UsageQuotas.period` (a UTC day, week or "
                "month). `quotas` lists the user's own quotas (`scope: user`) and the totals "
                "of their groups (`scope: group`); empty when none applies, `use` is still "
                "filled. `state` is `warning` from `warn_at` of a quota on and `exhausted` "
                "once one is used up, `message` then says which, the use and when the "
                "period ends. A user the gateway does not know has an empty use.",
                "parameters": [
                    _query(
                        "user",
                        "Another user's (admins only; others get a 403).",
                        {"type": "string", "minLength": 1},
                    ),
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/QuotaState"}, "The state."),
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                },
            },
        },
        "/api/v1/overview": {
            "get": {
                "tags": ["clusters"],
                "operationId": "overview",
                "summary": "The user's clusters with their owner, groups, workers and what they "
                "hold now (not in the public dask-gateway).",
                "description": "What the web console shows: more than the eight-key cluster "
                "JSON carries. `cores` and `memory` are what the cluster holds now: its "
                "scheduler and the workers started and not yet stopped. Newest first.",
                "parameters": [
                    _query(
                        "all",
                        "`1`: every user's clusters (admins only; others get a 403).",
                        {"type": "string", "enum": ["0", "1", "true", "false"]},
                    ),
                    _query(
                        "user",
                        "Only this user's clusters (`self`: the caller's). Another user's: "
                        "admins only.",
                        {"type": "string"},
                    ),
                    _query(
                        "group",
                        "Only clusters created by members of this group (the owner's groups "
                        "when the cluster was created).",
                        {"type": "string"},
                    ),
                    _query(
                        "status",
                        "Comma-separated statuses to include, as for `GET /api/v1/clusters/`. "
                        "Without it: the active clusters (pending, running, stopping).",
                        {"type": "string"},
                    ),
                ],
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/Overview"}, "The clusters, newest first."
                    ),
                    "401": _ERROR,
                    "403": _ERROR,
                    "422": _ERROR,
                },
            },
        },
        "/api/v1/clusters/{cluster_name}/heartbeat": {
            "parameters": [_CLUSTER_NAME],
            "post": {
                "tags": ["internal"],
                "operationId": "heartbeat",
                "summary": "A scheduler reports its addresses and workers.",
                "description": "Sent every `cluster_heartbeat_period` seconds by "
                "`dask_gateway.scheduler_preload`, authenticated with the "
                "cluster's token. The first accepted heartbeat sets the "
                "cluster's addresses, once the backend confirmed them; later "
                "ones must repeat them.",
                "security": [{"clusterToken": []}],
                "requestBody": _body(
                    {"$ref": "#/components/schemas/Heartbeat"}, "The scheduler's state."
                ),
                "responses": {
                    "200": {"description": "Recorded."},
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                    "409": _ERROR,
                    "422": _ERROR,
                },
            },
        },
        "/oauth_callback": {
            "get": {
                "tags": ["internal"],
                "operationId": "oauthCallback",
                "summary": "Where JupyterHub sends a browser back after a dashboard login.",
                "description": "Only with `JupyterHubAuthenticator` and an OAuth client "
                "configured. Exchanges the code for a token, sets the session "
                "cookie and redirects to the dashboard first asked for. The "
                "login must finish in the browser that started it (a cookie "
                "set with the redirect to the hub), else 400.",
                "security": [],
                "parameters": [
                    {
                        "name": "code",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "state",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "302": {"description": "Logged in; back to the page first asked for."},
                    "400": _ERROR,
                    "401": _ERROR,
                    "404": _ERROR,
                    "503": _ERROR,
                },
            },
        },
        "/clusters/{cluster_name}/{path}": {
            # A reverse proxy: these methods are passed on to the dashboard as they are.
            "x-proxied-methods": ["delete", "get", "patch", "post", "put"],
            "parameters": [
                _CLUSTER_NAME,
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "description": "The dashboard page, e.g. `status`.",
                    "schema": {"type": "string"},
                },
            ],
            "get": {
                "tags": ["clusters"],
                "operationId": "dashboard",
                "summary": "The cluster's Dask dashboard (HTML, websockets), proxied.",
                "description": "Every method (and websocket upgrades) is passed on to the "
                "scheduler's dashboard; GET is described here. "
                "For the cluster's owner and admins (unless "
                "`DaskGateway.open_dashboards`). A browser without credentials "
                "is sent to log in through the hub with JupyterHub auth, else "
                "answered 401.",
                "responses": {
                    "200": {
                        "description": "The dashboard page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "302": {"description": "To the hub's login (JupyterHub auth only)."},
                    "401": _ERROR,
                    "403": _ERROR,
                    "404": _ERROR,
                    "502": _ERROR,
                },
            },
        },
    },
    "components": {
        "securitySchemes": {
            "basic": {
                "type": "http",
                "scheme": "basic",
                "description": "`SimpleAuthenticator`: any user name; a shared password "
                "if `SimpleAuthenticator.password` is set.",
            },
            "kerberos": {
                "type": "http",
                "scheme": "negotiate",
                "description": "`KerberosAuthenticator` (SPNEGO).",
            },
            "jupyterhub": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`JupyterHubAuthenticator`: `Authorization: "
                "jupyterhub <hub API token>` (`token` and `Bearer` "
                "are accepted too).",
            },
            "session": {
                "type": "apiKey",
                "in": "cookie",
                "name": "dask-gateway-session",
                "description": "Set by the gateway after a successful login; "
                "alone, good for reads only (see above).",
            },
            "clusterToken": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Authorization: token <the cluster's API "
                "token>`, known only to its scheduler.",
            },
        },
        "responses": {
            "Error": _json({"$ref": "#/components/schemas/Error"}, "An error meant for the user."),
        },
        "schemas": {
            "QuotaState": {
                "type": "object",
                "required": [
                    "user",
                    "period",
                    "period_start",
                    "period_end",
                    "warn_at",
                    "when_exhausted",
                    "use",
                    "quotas",
                    "state",
                    "message",
                ],
                "properties": {
                    "user": {"type": "string"},
                    "period": {"enum": ["day", "week", "month"]},
                    "period_start": {"type": "integer", "description": "ms since the epoch"},
                    "period_end": {"type": "integer", "description": "ms since the epoch"},
                    "warn_at": {"type": "number"},
                    "when_exhausted": {"enum": ["keep", "no-new-workers", "stop"]},
                    "use": {
                        "type": "object",
                        "required": ["core_hours", "memory_gib_hours"],
                        "properties": {
                            "core_hours": {"type": "number"},
                            "memory_gib_hours": {"type": "number"},
                        },
                    },
                    "quotas": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["kind", "scope", "group", "limit", "used", "share"],
                            "properties": {
                                "kind": {"enum": ["core_hours", "memory_gib_hours"]},
                                "scope": {"enum": ["user", "group"]},
                                "group": {"type": ["string", "null"]},
                                "limit": {"type": "number"},
                                "used": {"type": "number"},
                                "share": {"type": "number"},
                            },
                        },
                    },
                    "state": {"enum": ["ok", "warning", "exhausted"]},
                    "message": {"type": ["string", "null"]},
                },
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"const": "pass"}},
            },
            "Version": {
                "type": "object",
                "required": ["version"],
                "properties": {"version": {"type": "string"}},
            },
            "OptionField": {
                "type": "object",
                "required": ["field", "label", "default", "spec"],
                "properties": {
                    "field": {"type": "string", "description": "The option's name."},
                    "label": {"type": "string", "description": "What a form shows."},
                    "default": {"description": "The value used when the option is not given."},
                    "spec": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {
                                "enum": ["string", "bool", "int", "float", "select", "mapping"]
                            },
                            "min": {"type": ["number", "null"]},
                            "max": {"type": ["number", "null"]},
                            "options": {"type": "array", "items": {"type": "string"}},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "OptionsSpec": {
                "type": "object",
                "required": ["cluster_options"],
                "properties": {
                    "cluster_options": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/OptionField"},
                    },
                },
            },
            "NewCluster": {
                "type": "object",
                "properties": {
                    "cluster_options": {
                        "type": ["object", "null"],
                        "description": "Option values by field name; unknown names are a 422.",
                    },
                },
            },
            "Cluster": {
                "type": "object",
                "description": "The eight keys every dask-gateway client understands (plus "
                "`username` in an admin's `?all=1` listing).",
                "required": [
                    "name",
                    "dashboard_route",
                    "status",
                    "start_time",
                    "stop_time",
                    "options",
                    "tls_cert",
                    "tls_key",
                ],
                "properties": {
                    "name": {"type": "string"},
                    "dashboard_route": {
                        "type": ["string", "null"],
                        "description": "Path of the dashboard under the gateway's address, "
                        "once running.",
                    },
                    "status": {"enum": ["PENDING", "RUNNING", "STOPPING", "STOPPED", "FAILED"]},
                    "start_time": {
                        "type": "integer",
                        "description": "Milliseconds since the epoch.",
                    },
                    "stop_time": {"type": ["integer", "null"]},
                    "options": {
                        "type": "object",
                        "description": "The options the cluster was created with.",
                    },
                    "tls_cert": {
                        "type": ["string", "null"],
                        "description": "PEM certificate to reach the scheduler (while running).",
                    },
                    "tls_key": {
                        "type": ["string", "null"],
                        "description": "PEM key to reach the scheduler (while running).",
                    },
                    "username": {"type": "string", "description": "Only with `?all=1`."},
                },
                "additionalProperties": False,
            },
            "ScaleResult": {
                "type": "object",
                "required": ["ok", "msg"],
                "properties": {
                    "ok": {
                        "type": "boolean",
                        "description": "false when the request was lowered to a limit.",
                    },
                    "msg": {"type": ["string", "null"], "description": "Why it was lowered."},
                },
                "additionalProperties": False,
            },
            "Workers": {
                "type": "object",
                "required": ["workers", "cores", "memory", "requested", "pending"],
                "properties": {
                    "workers": {"type": "integer", "minimum": 0, "description": "Running workers."},
                    "cores": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Their cores in total.",
                    },
                    "memory": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Their memory in total, in bytes.",
                    },
                    "requested": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Workers asked for (scale or adaptive).",
                    },
                    "pending": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Workers asked for and not running yet (starting).",
                    },
                },
                "additionalProperties": False,
            },
            "Event": {
                "type": "object",
                "required": ["id", "time", "kind", "worker", "message", "detail"],
                "properties": {
                    "id": {"type": "integer", "description": "Increases with each event."},
                    "time": {"type": "integer", "description": "Milliseconds since the epoch."},
                    "kind": {"enum": list(KINDS)},
                    "worker": {
                        "type": ["string", "null"],
                        "description": "The worker's name, for the worker-* kinds.",
                    },
                    "message": {"type": "string", "description": "One sentence for the user."},
                    "detail": {
                        "type": "string",
                        "description": "Longer text, e.g. the end of a log; may be empty.",
                    },
                    "cluster": {"type": "string", "description": "Only in `/api/v1/events`."},
                    "user": {"type": "string", "description": "Only in `/api/v1/events`."},
                },
                "additionalProperties": False,
            },
            "Events": {
                "type": "object",
                "required": ["events", "cursor", "done"],
                "properties": {
                    "events": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Event"},
                    },
                    "cursor": {
                        "type": "integer",
                        "description": "The last event's id (else `after`, or 0): the next "
                        "request's `after`.",
                    },
                    "done": {
                        "type": "boolean",
                        "description": "The cluster has ended and every event was sent: "
                        "no more will come.",
                    },
                },
                "additionalProperties": False,
            },
            "Logs": {
                "type": "object",
                "required": ["logs"],
                "properties": {
                    "logs": {
                        "type": "object",
                        "description": "Component (`scheduler`, `worker:NAME`) to its text.",
                        "additionalProperties": {"type": "string"},
                    },
                    "offset": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "With `component`: the byte position after the text "
                        "(where the next request goes on).",
                    },
                    "start": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "With `component`: the byte position of its first byte.",
                    },
                    "done": {
                        "type": "boolean",
                        "description": "With `component`: the cluster has ended, the log "
                        "will not grow.",
                    },
                },
                "additionalProperties": False,
            },
            "UsageFigures": {
                "type": "object",
                "required": list(_USAGE_FIGURES),
                "properties": _USAGE_FIGURES,
            },
            "UsageRow": {
                "type": "object",
                "description": "The figures and, by `by`: `user`; `group` (null: owners "
                "without a group); `cluster`, `user`, `groups`, `start_time`, `stop_time` "
                "(null while it runs); `day` (`2026-12-05`, UTC).",
                "required": list(_USAGE_FIGURES),
                "properties": {
                    "user": {"type": "string"},
                    "group": {"type": ["string", "null"]},
                    "cluster": {"type": "string"},
                    "groups": {"type": "array", "items": {"type": "string"}},
                    "start_time": {"type": "integer"},
                    "stop_time": {"type": ["integer", "null"]},
                    "day": {"type": "string", "format": "date"},
                    **_USAGE_FIGURES,
                },
                "additionalProperties": False,
            },
            "Usage": {
                "type": "object",
                "required": ["since", "until", "by", "rows", "total", "next_offset"],
                "properties": {
                    "since": {"type": "integer", "description": "Milliseconds since the epoch."},
                    "until": {"type": "integer", "description": "Milliseconds since the epoch."},
                    "by": {"enum": ["user", "group", "cluster", "day"]},
                    "rows": {"type": "array", "items": {"$ref": "#/components/schemas/UsageRow"}},
                    "total": {"$ref": "#/components/schemas/UsageFigures"},
                    "next_offset": {
                        "type": ["integer", "null"],
                        "description": "The `offset` of the next page; null on the last.",
                    },
                },
                "additionalProperties": False,
            },
            "OverviewCluster": {
                "type": "object",
                "required": [
                    "name",
                    "user",
                    "groups",
                    "status",
                    "workers",
                    "cores",
                    "memory",
                    "start_time",
                    "stop_time",
                    "options",
                    "dashboard_route",
                ],
                "properties": {
                    "name": {"type": "string"},
                    "user": {"type": "string", "description": "The owner."},
                    "groups": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "The owner's groups when the cluster was created.",
                    },
                    "status": {"enum": ["PENDING", "RUNNING", "STOPPING", "STOPPED", "FAILED"]},
                    "workers": {
                        "type": "object",
                        "required": ["requested", "running", "pending"],
                        "properties": {
                            "requested": {"type": "integer", "minimum": 0},
                            "running": {"type": "integer", "minimum": 0},
                            "pending": {"type": "integer", "minimum": 0},
                        },
                        "additionalProperties": False,
                    },
                    "cores": {
                        "type": "number",
                        "minimum": 0,
                        "description": "Cores held now: the scheduler's and the started workers'.",
                    },
                    "memory": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Memory held now, in bytes.",
                    },
                    "start_time": {
                        "type": "integer",
                        "description": "Milliseconds since the epoch.",
                    },
                    "stop_time": {"type": ["integer", "null"]},
                    "options": {
                        "type": "object",
                        "description": "The options the cluster was created with.",
                    },
                    "dashboard_route": {
                        "type": ["string", "null"],
                        "description": "Path of the dashboard under the gateway's address, "
                        "once running.",
                    },
                },
                "additionalProperties": False,
            },
            "Overview": {
                "type": "object",
                "required": ["clusters"],
                "properties": {
                    "clusters": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/OverviewCluster"},
                    },
                },
                "additionalProperties": False,
            },
            "Heartbeat": {
                "type": "object",
                "required": [
                    "scheduler_address",
                    "dashboard_address",
                    "api_address",
                    "count",
                    "active_workers",
                    "closing_workers",
                    "closed_workers",
                ],
                "properties": {
                    "scheduler_address": {"type": "string"},
                    "dashboard_address": {"type": "string"},
                    "api_address": {"type": "string"},
                    "count": {
                        "type": "integer",
                        "description": "Workers the scheduler wants; lowered to the "
                        "cluster's and the user's limits (and to "
                        "2147483647).",
                    },
                    "active_workers": {"type": "array", "items": {"type": "string"}},
                    "closing_workers": {"type": "array", "items": {"type": "string"}},
                    "closed_workers": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}


# What an error status means, per operation where it differs from the usual meaning.
_ERROR_MEANINGS = {
    "400": "The body is not valid JSON, or is nested too deeply to read.",
    "401": "No credentials, or invalid ones; `WWW-Authenticate` names the scheme to use.",
    "403": "The user is neither the cluster's owner nor an admin.",
    "404": "No cluster of that name.",
    "409": "The cluster is not running (any more).",
    "422": "Invalid values; the message says which.",
    "429": "A quota over time (`UsageQuotas`) is used up: the message names it, the use so "
    "far and when the period ends; `Retry-After` is the seconds until then.",
    "500": "A failure on the gateway's side; its log has the details.",
    "502": "Something behind the gateway answered wrongly.",
    "503": "Something the gateway depends on is unreachable.",
}
_ERROR_OVERRIDES = {
    ("clusterLogs", "400"): "`tail`, `offset`, `wait` or `follow` out of range, or `offset`, "
    "`wait` or `follow` without `component`.",
    ("clusterLogs", "404"): "No cluster of that name (or past retention), or a component it "
    "never had; the message names those it has.",
    ("getOptions", "500"): "The gateway's `cluster_options` (a callable in its config) failed.",
    ("listClusters", "403"): "`all=1` from a user who is not an admin.",
    ("listClusters", "422"): "An unknown status in `status`.",
    ("createCluster", "422"): "An unknown option, a value out of range, or over the user's "
    "limits (`UserLimits`).",
    ("scaleCluster", "422"): "Not a non-negative integer, over the user's limits, or above "
    "2147483647.",
    ("adaptCluster", "422"): "Bounds that are not non-negative integers, minimum > maximum, or "
    "above 2147483647.",
    ("clusterEvents", "400"): "`after`, `since`, `limit` or `wait` is not valid; the message "
    "says which.",
    ("clusterEvents", "404"): "No cluster of that name, or it ended longer than "
    "`events_max_age` ago.",
    ("userEvents", "400"): "`after`, `since`, `limit` or `wait` is not valid; the message "
    "says which.",
    ("userEvents", "403"): "`all=1` from a user who is not an admin.",
    ("getUsage", "400"): "A date that does not parse, `until` not after `since`, an unknown "
    "`by` or `format`, `limit` or `offset` out of range, or `by=day` over more than 3660 "
    "days; the message says which.",
    ("getUsage", "403"): "A user asking for another user's usage.",
    ("getQuota", "400"): "An empty `user`.",
    ("getQuota", "403"): "Another user's quota, asked by a user who is not an admin.",
    ("overview", "403"): "`all=1`, or another user in `user`, from a user who is not an admin.",
    ("overview", "422"): "An unknown status in `status`.",
    ("heartbeat", "401"): "Not the cluster's token.",
    ("heartbeat", "403"): "An address the backend cannot confirm as the scheduler's: not on "
    "the host its job runs on, not its socket, link-local or a cloud "
    "metadata address.",
    ("heartbeat", "409"): "Addresses different from those already set (they never change), "
    "or the scheduler's job cannot be checked yet (still pending).",
    ("heartbeat", "422"): "A field missing or of the wrong type, or an address that is not "
    "scheme://IP:port.",
    ("oauthCallback", "400"): "An unknown or expired login, or the hub refused it.",
    ("oauthCallback", "401"): "The hub did not accept the login code.",
    ("oauthCallback", "404"): "This gateway's authenticator has no browser login.",
    ("oauthCallback", "503"): "The hub is unreachable.",
    ("dashboard", "401"): "No credentials, and no browser login to send the browser to.",
    ("dashboard", "404"): "No running cluster of that name.",
    ("dashboard", "502"): "The scheduler's dashboard does not answer.",
}


def _describe_errors(spec: dict[str, Any]) -> None:
    """Give each error response of each operation the meaning it has there."""
    for item in spec["paths"].values():
        for _method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for status, resp in op["responses"].items():
                if resp is _ERROR:
                    text = _ERROR_OVERRIDES.get(
                        (op["operationId"], status), _ERROR_MEANINGS[status]
                    )
                    op["responses"][status] = _json({"$ref": "#/components/schemas/Error"}, text)


_describe_errors(_SPEC)


def openapi_spec(prefix: str = "") -> dict[str, Any]:
    """The document for a gateway serving under ``prefix`` (a copy: callers may change it)."""
    spec = copy.deepcopy(_SPEC)
    spec["servers"][0]["url"] = prefix.rstrip("/") or "/"
    return spec
