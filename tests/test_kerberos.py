"""Kerberos (SPNEGO) auth against a real KDC started by scripts/services/start-kdc.sh."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from support.http_helpers import call


@pytest.fixture
def kdc():
    keytab = os.environ.get("TEST_KEYTAB")
    if not keytab or not os.path.exists(keytab):
        pytest.fail(
            "No test KDC: start one with scripts/services/start-kdc.sh (scripts/test.sh does this)"
        )
    return keytab


def kinit(user: str, ccache: str) -> dict:
    env = dict(os.environ, KRB5CCNAME=f"FILE:{ccache}")
    subprocess.run(
        ["kinit", user], input=f"pw-{user}\n", text=True, env=env, check=True, capture_output=True
    )
    return env


def test_kerberos_users_run_clusters(fresh_gateway, kdc, tmp_path):
    gw = fresh_gateway(
        [
            "--DaskGateway.authenticator_class=dask_gateway_server.auth.KerberosAuthenticator",
            f"--KerberosAuthenticator.keytab={kdc}",
        ]
    )
    gw.start()
    r = call("GET", f"{gw.address}/api/v1/clusters/")
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Negotiate"
    r = call("GET", f"{gw.address}/api/v1/clusters/", headers={"Authorization": "Negotiate abc"})
    assert r.status == 401 and r.json()["error"].startswith("Kerberos authentication failed")

    script = textwrap.dedent(f"""
        import getpass
        from dask_gateway import Gateway
        with Gateway("{gw.address}", auth="kerberos") as gateway:
            with gateway.new_cluster() as cluster:
                cluster.scale(1)
                client = cluster.get_client()
                print(client.submit(lambda: 6 * 7).result())
                print(len(gateway.list_clusters()))
    """)
    env = kinit("alice", str(tmp_path / "alice.cc"))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr + gw.log()
    assert out.stdout.split() == ["42", "1"]
    assert "Created cluster" in gw.log() and "for user alice" in gw.log()

    # Bob has a ticket too, but alice's clusters are not his.
    env = kinit("bob", str(tmp_path / "bob.cc"))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        from dask_gateway import Gateway
        with Gateway("{gw.address}", auth="kerberos") as gateway:
            print(gateway.list_clusters(status=["running", "stopped", "stopping"]))
    """),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

    # No ticket: a clear error, not a crash.
    env = dict(os.environ, KRB5CCNAME=f"FILE:{tmp_path / 'none.cc'}")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        from dask_gateway import Gateway
        Gateway("{gw.address}", auth="kerberos").list_clusters()
    """),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "credentials" in out.stderr.lower() or "kerberos" in out.stderr.lower()
