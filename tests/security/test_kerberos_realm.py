"""Kerberos realms (issue 14, finding 6): a principal is a user of the gateway only in the
gateway's realm. Before, ``alice@ANY.REALM`` (any realm the KDC trusts) was the user
``alice``, with her clusters.

The test KDC (scripts/services/start-kdc.sh) serves one realm, TEST.DASK. A principal of
another realm is played by the same ticket against a gateway configured for another realm:
to that gateway, TEST.DASK is the foreign realm.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

LIST_CLUSTERS = textwrap.dedent("""
    import sys
    from dask_gateway import Gateway
    with Gateway(sys.argv[1], auth="kerberos") as gateway:
        print(len(gateway.list_clusters()))
""")


@pytest.fixture
def keytab():
    path = os.environ.get("TEST_KEYTAB")
    if not path or not os.path.exists(path):
        pytest.fail(
            "No test KDC: start one with scripts/services/start-kdc.sh (scripts/test.sh does this)"
        )
    return path


def _as_alice(gw, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, KRB5CCNAME=f"FILE:{tmp_path / 'alice.cc'}")
    subprocess.run(
        ["kinit", "alice"], input="pw-alice\n", text=True, env=env, check=True, capture_output=True
    )
    return subprocess.run(
        [sys.executable, "-c", LIST_CLUSTERS, gw.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_principal_of_another_realm_is_refused(fresh_gateway, keytab, tmp_path):
    kerberos = [
        "--DaskGateway.authenticator_class=dask_gateway_server.auth.KerberosAuthenticator",
        f"--KerberosAuthenticator.keytab={keytab}",
    ]
    other = fresh_gateway([*kerberos, "--KerberosAuthenticator.realm=OTHER.DASK"])
    other.start()
    out = _as_alice(other, tmp_path)
    assert out.returncode != 0
    assert "403" in out.stderr and "is not of realm OTHER.DASK" in out.stderr, out.stderr

    # The legitimate use: in its own (the host's default) realm, alice is alice.
    own = fresh_gateway(kerberos)
    own.start()
    out = _as_alice(own, tmp_path)
    assert out.returncode == 0, out.stderr + own.log()
    assert out.stdout.strip() == "0"
