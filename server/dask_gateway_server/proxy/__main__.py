"""``python -m dask_gateway_server.proxy CONFIG_JSON``: the separate proxy process (started by
the gateway with ``Proxy.separate_process``; see ``process.py``)."""

from .process import main

if __name__ == "__main__":
    main()
