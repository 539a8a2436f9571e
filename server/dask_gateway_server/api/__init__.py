"""The REST API: tornado handlers speaking the public dask-gateway wire format.

JSON in, JSON out; every error a client can cause is a JSON ``{"error": ...}`` with a 4xx
status. Handlers know the authenticator and the reconciler, never processes or SQL.

One module a job, each ending with its ``ROUTES`` (paths as ``openapi.py`` writes them):
``server`` (health, version, metrics, the OpenAPI document), ``clusters`` (what users do),
``heartbeat`` (what schedulers report), ``login`` (browser logins and dashboard access);
``base`` holds what they share. ``app.py`` serves the lists.
"""
