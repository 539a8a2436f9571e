"""``python -m dask_gateway_server.proxy_process CONFIG_JSON``: runs ``proxy/process.py``."""

from .proxy.process import main

if __name__ == "__main__":
    main()
