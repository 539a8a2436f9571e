"""How the Jupyter extension shows the client's exceptions to the browser (in process)."""

from dask_gateway import GatewayServerError, GatewayUnsupportedError
from dask_gateway_jupyter.errors import translate_error


def test_a_gateway_without_a_feature_is_501_not_a_gateway_failure():
    """The public dask-gateway-server keeps no events or logs: the browser is told so (501),
    not that the gateway failed (500)."""
    err = translate_error(GatewayUnsupportedError("This gateway keeps no cluster logs"), None)
    assert err is not None
    assert (err.status, err.message) == (501, "This gateway keeps no cluster logs")
    err = translate_error(GatewayServerError("boom"), None)
    assert err is not None and err.status == 500
