"""Server pieces on their own: options, limits, the store's encryption."""

from __future__ import annotations

import asyncio
import base64
import os
import stat

import pytest
import sqlalchemy as sa
from traitlets import TraitError

from dask_gateway_server.backends.base import ClusterConfig, format_bytes
from dask_gateway_server.models import Cluster, ClusterStatus, JobStatus, User, Worker
from dask_gateway_server.options import Bool, Float, Integer, Mapping, Options, Select, String
from dask_gateway_server.store import Store, load_or_create_key_file, normalize_encrypt_key
from dask_gateway_server.tls import new_keypair


def test_option_specs_and_defaults():
    opts = Options(
        String("s", "x"),
        Bool("b"),
        Integer("i", 1, min=0, max=3),
        Float("f", 1, max=2),
        Select("sel", ["a", ("b", 2)]),
        Mapping("m"),
    )
    assert opts.get_specification() == [
        {"field": "s", "label": "s", "default": "x", "spec": {"type": "string"}},
        {"field": "b", "label": "b", "default": False, "spec": {"type": "bool"}},
        {"field": "i", "label": "i", "default": 1, "spec": {"type": "int", "min": 0, "max": 3}},
        {
            "field": "f",
            "label": "f",
            "default": 1.0,
            "spec": {"type": "float", "min": None, "max": 2.0},
        },
        {
            "field": "sel",
            "label": "sel",
            "default": "a",
            "spec": {"type": "select", "options": ["a", "b"]},
        },
        {"field": "m", "label": "m", "default": {}, "spec": {"type": "mapping"}},
    ]
    parsed = opts.parse_options({"sel": "b", "m": {"k": 1}})
    assert parsed == {"s": "x", "b": False, "i": 1, "f": 1.0, "sel": "b", "m": {"k": 1}}
    assert opts.transform_options(parsed)["sel"] == 2


def test_option_handler_receives_user_when_asked():
    seen = {}

    def handler(options, user):
        seen["user"] = user
        return {"worker_cores": options.i}

    opts = Options(Integer("i", 2), handler=handler)
    config = asyncio.run(opts.get_configuration(opts.parse_options({}), User("alice")))
    assert config == {"worker_cores": 2} and seen["user"].name == "alice"
    one_arg = Options(Integer("i", 2), handler=lambda options: {"x": options["i"]})
    assert asyncio.run(one_arg.get_configuration({"i": 3}, None)) == {"x": 3}
    with pytest.raises(TypeError, match="must return a dict"):
        asyncio.run(Options(Integer("i"), handler=lambda o: 1).get_configuration({"i": 1}, None))


def test_resource_limits():
    config = ClusterConfig(
        worker_memory="1 G",
        scheduler_memory="1 G",
        cluster_max_memory="4 G",
        worker_cores=2,
        cluster_max_cores=9,
        cluster_max_workers=5,
    )
    assert config.effective_max_workers() == 3
    with pytest.raises(
        ValueError,
        match="Scheduler memory request of 2.00 GiB exceeds cluster memory limit of 1024.00 MiB",
    ):
        ClusterConfig(cluster_max_memory="1 G").effective_max_workers()
    assert ClusterConfig().to_dict()["cluster_max_workers"] is None
    with pytest.raises(TraitError):
        ClusterConfig(worker_memory="lots")
    assert format_bytes(2**30) == "1024.00 MiB"


def test_public_status_mapping():
    c = Cluster("n", "u", "t", {}, {}, b"", b"")
    assert c.model_status == ClusterStatus.PENDING
    c.status = JobStatus.RUNNING
    assert c.model_status == ClusterStatus.RUNNING
    c.target = JobStatus.STOPPED
    assert c.model_status == ClusterStatus.STOPPING
    c.status = JobStatus.STOPPED
    assert c.model_status == ClusterStatus.STOPPED
    assert c.to_dict()["tls_key"] is None


def test_encrypt_keys():
    raw = os.urandom(32)
    assert normalize_encrypt_key(raw) == normalize_encrypt_key(normalize_encrypt_key(raw))
    # Raw keys whose bytes happen to be whitespace at the edges are still 32-byte keys.
    edgy = b" \n" + os.urandom(28) + b"\t\x0b"
    assert base64.urlsafe_b64decode(normalize_encrypt_key(edgy)) == edgy
    text = base64.b64encode(os.urandom(32)).decode()  # `openssl rand -base64 32`
    assert normalize_encrypt_key(text + "\n") == normalize_encrypt_key(text)
    with pytest.raises(ValueError, match="32 bytes"):
        normalize_encrypt_key("short")


def test_store_round_trip_encrypts_secrets(tmp_path):
    key = load_or_create_key_file(str(tmp_path / "key"))
    assert stat.S_IMODE(os.stat(tmp_path / "key").st_mode) == 0o600
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cert, tls_key = new_keypair("abc")

    async def main():
        store = Store(url, [key])
        await store.setup()
        cluster = Cluster("abc", "alice", "secret-token", {"a": 1}, {"b": 2}, cert, tls_key)
        await store.add_cluster(cluster)
        worker = Worker("w1", "abc")
        await store.add_worker(cluster, worker)
        await store.update_cluster(cluster, status=JobStatus.RUNNING, count=3)
        await store.update_worker(worker, status=JobStatus.SUBMITTED, state={"pid": 1})
        await store.close()

        store = Store(url, [key])
        (loaded,) = await store.load()
        assert (loaded.name, loaded.token, loaded.status, loaded.count) == (
            "abc",
            "secret-token",
            JobStatus.RUNNING,
            3,
        )
        assert loaded.tls_cert == cert and loaded.tls_key == tls_key
        assert loaded.workers["w1"].state == {"pid": 1}
        await store.update_cluster(loaded, status=JobStatus.STOPPED, stop_time=1)
        assert await store.delete_stopped_before(2) == ["abc"]
        assert await store.load() == []
        await store.close()

    asyncio.run(main())
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        raw = b"".join(bytes(r[0]) for r in conn.execute(sa.text("select token from clusters")))
    assert b"secret-token" not in raw


def test_store_with_wrong_key_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    async def main():
        store = Store(url, [os.urandom(32)])
        await store.setup()
        await store.add_cluster(Cluster("abc", "a", "t", {}, {}, b"c", b"k"))
        await store.close()
        other = Store(url, [os.urandom(32)])
        with pytest.raises(Exception, match="encryption keys changed"):
            await other.load()
        await other.close()

    asyncio.run(main())


def test_key_rotation(tmp_path):
    """Add a new key in front, start once, then the old key can go."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    old, new = os.urandom(32), os.urandom(32)

    async def main():
        store = Store(url, [old])
        await store.setup()
        await store.add_cluster(Cluster("abc", "a", "secret", {}, {}, b"cert", b"key"))
        await store.close()

        store = Store(url, [new, old])  # what a gateway with both keys does at start
        assert await store.rotate_keys() == 1
        await store.close()

        store = Store(url, [new])
        (cluster,) = await store.load()
        assert (cluster.token, cluster.tls_cert, cluster.tls_key) == ("secret", b"cert", b"key")
        await store.close()

        store = Store(url, [old])
        with pytest.raises(Exception, match="encryption keys changed"):
            await store.load()
        await store.close()

    asyncio.run(main())
