"""The Ray engine computes what the local engine computes, to the last bit, and they share one cache.

Ray runs locally (``ray.init(num_cpus=2)``), once for the module, shut down at its end. Each pipeline
starts its actors afresh (seconds each on two busy cores), so every test that runs Ray is marked slow.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from forensics.engine import Engine, make_engine, make_protocol
from forensics.errors import UsageError

ENCODER = "vit_tiny_patch16_224.augreg_in21k"
STAT = {"k": 3, "distance": "cosine", "projection": 16, "seed": 0}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def protocol():
    """Digits under a random tiny ViT at three layers; T = 1,438 and P_n = 359 images, m = 100."""
    from forensics import plugins

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        yield make_protocol("digits-ray", dataset="digits", encoder=ENCODER, encoder_options={"image_size": 32},
                            weights="random", layers=["blocks.0", "blocks.5", "blocks.11"], statistic_params=STAT,
                            batch_size=100)
    finally:
        plugins.reset(old)


def queries():
    import forensics_datasets

    return np.concatenate([forensics_datasets.load_digits("train")[:100],  # copies of T
                           forensics_datasets.load_digits("test")[:150]])


def values(curves):
    return [c.fingerprint.values for c in curves]


def forget_reference_sides(root):
    """Keep the embeddings, drop the fitted reference sides: the next engine fits from the embeddings."""
    from forensics import engine

    shutil.rmtree(root / "reference", ignore_errors=True)
    if hasattr(engine, "forget_opened"):
        engine.forget_opened()


# -- without Ray running ---------------------------------------------------------------------------
def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, toy_protocol):
    monkeypatch.setitem(sys.modules, "ray", None)
    from forensics.extras import MissingExtra

    with pytest.raises(MissingExtra, match=r"forensics-attribution\[ray\]") as info:  # a failed run, exit 1
        make_engine(toy_protocol(), engine="ray")
    assert "\n" not in str(info.value)


def test_a_report_says_which_cluster_computed():
    from types import SimpleNamespace

    from forensics.report import cluster_text
    from forensics.report.html import _compute_line
    from forensics.report.terminal import compute_text

    ray = {"engine": "ray", "device": "cuda", "amp": None,
           "ray": {"address": "head:6379", "version": "2.60.0", "nodes": 3, "actors": 12, "threads": 1}}
    assert compute_text(SimpleNamespace(compute=ray)) == \
        "the Ray 2.60.0 cluster at head:6379 (3 nodes, 12 actors), device cuda, float32"
    assert _compute_line({"compute": ray}) == \
        "computed on the Ray 2.60.0 cluster at head:6379 (3 nodes, 12 actors)'s cuda, float32"
    assert cluster_text({"engine": "ray", "device": "cpu"}) == "a Ray cluster"  # a report from before it was kept
    assert cluster_text({"engine": "local", "device": "cpu"}) is None
    assert compute_text(SimpleNamespace(compute={"engine": "local", "device": "cpu", "amp": "bf16"})) == \
        "device cpu, amp bf16"


def test_engine_names_are_checked(toy_protocol):
    with pytest.raises(UsageError, match="local or ray"):
        make_engine(toy_protocol(), engine="spark")
    with pytest.raises(UsageError, match="--ray-address is for --engine ray"):
        make_engine(toy_protocol(), ray_address="auto")


def test_a_cluster_address_that_does_not_answer_fails_fast():
    import socket

    from forensics.distributed import _reachable

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(UsageError, match="no Ray cluster answers"):
        _reachable(f"127.0.0.1:{port}")
    with pytest.raises(UsageError, match="HOST:PORT"):
        _reachable("nonsense")
    _reachable(None)
    _reachable("auto")


@pytest.mark.parametrize("reply, ray_like", [
    (b"HTTP/1.0 400 Bad Request\r\n\r\n", False),  # a web server: the dashboard's port, a proxy
    (b"", False),  # accepts and closes
    (bytes([0, 0, 6, 4, 0, 0, 0, 0, 0]) + bytes(6), True),  # an HTTP/2 server's SETTINGS frame: gRPC, as Ray's
])
def test_a_port_that_answers_but_not_as_ray_is_refused_at_once(reply, ray_like):
    # an address where something else listens sent Ray into minutes of retries, its log lines on stderr
    import socket
    import threading

    from forensics.distributed import _reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            if reply:
                conn.sendall(reply)

    threading.Thread(target=answer, daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        if ray_like:
            _reachable(address, timeout=5)
        else:
            with pytest.raises(UsageError, match="something answers at .*, but not Ray"):
                _reachable(address, timeout=5)
    finally:
        server.close()
    with pytest.raises(UsageError, match="dashboard's http:// address"):
        _reachable("http://127.0.0.1:8265")


# -- with Ray --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_fits_the_reference_side_and_local_reuses_its_cache(ray_local, protocol, plugin_host, tmp_path,
                                                                  monkeypatch, count_calls):
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path))
    ray_engine = make_engine(protocol, engine="ray")
    assert ray_engine.actors == 2  # two CPUs, one torch thread each (the test process's count)
    on_ray = ray_engine.curves(queries())
    assert ray_engine.reference_origin.startswith("computed, cached at")
    first = np.array(on_ray[0].fingerprint.values, dtype=float)
    assert np.all(first < -2.0)  # exact copies of T read as copying
    # the actors wrote each layer's embeddings of T and P_n as shards; the driver indexed them
    indexes = sorted((tmp_path / "embeddings").rglob("index.json"))
    assert len(indexes) == 2 * 3
    assert any(len(json.loads(p.read_text())["shards"]) > 1 for p in indexes)

    forget_reference_sides(tmp_path)
    local = Engine(protocol)
    counting = count_calls(local.encoder())
    local._encoder = counting
    local.reference_side()
    assert counting.calls == []  # T and P_n read from Ray's shards, nothing re-embedded
    assert local.reference_origin.startswith("computed, cached at")
    assert values(local.curves(queries())) == values(on_ray)  # to the last bit


@pytest.mark.slow
def test_a_reference_side_under_a_condition_is_fitted_alike_on_ray(ray_local, protocol, plugin_host, tmp_path,
                                                                  monkeypatch):
    from forensics.conditions import get_condition

    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path))
    processed = get_condition("jpeg75").apply(queries())
    on_ray = values(make_engine(protocol, engine="ray", condition="jpeg75").curves(processed))
    assert np.all(np.array(on_ray[0], dtype=float) < -2.0)  # copies of T, processed as T was: copying
    forget_reference_sides(tmp_path)
    local = Engine(protocol, condition="jpeg75")
    assert values(local.curves(processed)) == on_ray  # to the last bit
    assert local.reference_origin.startswith("computed, cached at")
    assert values(Engine(protocol).curves(processed)) != on_ray  # T and P_n as they are: another reference side


@pytest.mark.slow
def test_ray_reuses_the_local_cache_and_gives_the_same_curves(ray_local, protocol, plugin_host, tmp_path,
                                                               monkeypatch):
    from forensics.distributed.ray_engine import RayEngine

    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path))
    local = Engine(protocol)
    on_local = local.curves(queries())
    forget_reference_sides(tmp_path)
    runs = []
    original = RayEngine._run

    def recording(self, jobs, root):
        runs.append([(len(job[0]), job[2], root) for job in jobs])
        return original(self, jobs, root)

    monkeypatch.setattr(RayEngine, "_run", recording)
    ray_engine = make_engine(protocol, engine="ray")
    assert values(ray_engine.curves(queries())) == values(on_local)
    assert runs == [[(250, "query images", None)]]  # T and P_n came from the local engine's cache
    assert ray_engine.reference_origin.startswith("computed")
    # image files, read by the pipeline's tasks; one curve of a set smaller than m (memorization's path)
    from PIL import Image

    paths = []
    for i, image in enumerate(queries()[:60]):
        paths.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    on_ray = ray_engine.embed(paths)
    assert all(np.array_equal(a, b) for a, b in zip(on_ray, local.embed(paths)))
    assert ray_engine.curve_from_embeddings(on_ray).fingerprint.values == \
        local.curve_from_embeddings(on_ray).fingerprint.values


@pytest.mark.slow
def test_attribute_json_is_the_same_with_engine_ray(ray_local, monkeypatch, capsys, tmp_path):
    """The command itself: ``forensics attribute X --json --engine ray`` prints the local run's curve."""
    from forensics.cli.commands import run

    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FORENSICS_THREADS", "1")  # the CNN's sums depend on the thread count
    sample = str(Path(__file__).parents[1] / "registry/mnist-effnet-lite0/samples/ddpm/heldout.npz")
    outputs = []
    for extra in ([], ["--engine", "ray"]):
        assert run(["attribute", sample, "--protocol", "mnist-effnet-lite0", "--json", *extra]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    local, on_ray = outputs
    assert on_ray["curve"] == local["curve"]
    assert on_ray["verdict"] == local["verdict"]
    assert (local["compute"]["engine"], on_ray["compute"]["engine"]) == ("local", "ray")  # where it ran is kept
    # and which cluster: joined through the connection made here, by its own address, with Ray's version
    from forensics.schemas import validate

    assert "ray" not in local["compute"]
    assert on_ray["compute"]["ray"] == {"address": ray_local.get_runtime_context().gcs_address,
                                        "version": ray_local.__version__, "nodes": 1, "actors": 2, "threads": 1}
    validate(on_ray)


@pytest.mark.slow
def test_memorization_of_images_processed_in_several_ways_is_the_same_on_ray(ray_local, monkeypatch, tmp_path):
    """Each kind of image scored against T and P_n put through it: one engine per condition, on Ray as here."""
    from forensics import api
    from forensics.conditions import get_condition

    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FORENSICS_THREADS", "1")
    images = np.load(Path(__file__).parents[1] / "registry/mnist-effnet-lite0/samples/ddpm/heldout.npz")["images"][:120]
    kinds = ["jpeg90" if i % 3 == 0 else "none" for i in range(len(images))]
    mixed = np.where(np.array([k == "jpeg90" for k in kinds])[:, None, None], get_condition("jpeg90").apply(images),
                     images)
    local = api.memorization(mixed, protocol="mnist-vit", condition=kinds)
    on_ray = api.memorization(mixed, protocol="mnist-vit", condition=kinds, engine="ray")
    assert [(n, c.fingerprint.values) for n, c in on_ray.parts] == [(n, c.fingerprint.values) for n, c in local.parts]
    assert on_ray.curve.fingerprint.values == local.curve.fingerprint.values and len(local.parts) == 2
    assert "ray" not in local.compute and on_ray.compute["ray"]["version"] == ray_local.__version__


@pytest.mark.slow
def test_sharded_search_on_ray_tasks_is_exact(ray_local):
    from forensics.distributed.search import ShardedSearch
    from forensics.stats.ct.search import nearest_distance

    rng = np.random.default_rng(0)
    train, queries = rng.standard_normal((900, 8)), rng.standard_normal((200, 8))
    got = ShardedSearch(shard_rows=256, ray=True).nearest(queries, train, "euclidean")
    assert np.array_equal(got, nearest_distance(queries, train, "euclidean"))


def test_workers_under_the_ray_engine_decode_the_folder_on_this_machine(monkeypatch, caplog, tmp_path):
    """A folder's files are decoded on the driver under either engine (their digest, repeats and processing are
    read from the pixels there), in --workers processes: under Ray, --workers 2 was said to do nothing while it
    decoded the folder in two processes. Ray's engine is not handed them (its Ray Data tasks preprocess)."""
    import forensics.api as api
    import forensics.engine as engines

    made, read = [], []
    monkeypatch.setattr(engines, "make_engine", lambda *a, **k: made.append(k) or "an engine")

    def reading(images, protocol, **kw):
        read.append(kw["workers"])
        raise KeyboardInterrupt  # the engine and the reading are all this test is about

    monkeypatch.setattr(api, "read_images", reading)
    (tmp_path / "imgs").mkdir()
    with caplog.at_level("WARNING", logger="forensics"), pytest.raises(KeyboardInterrupt):
        api.attribute(tmp_path / "imgs", protocol="mnist-vit", engine="ray", workers=2)
    assert read == [2] and "workers" not in made[0] and made[0]["engine"] == "ray"
    assert not [r for r in caplog.records if "--workers" in r.getMessage()]


def test_a_forensics_error_raised_in_a_ray_task_comes_back_as_its_own_line(monkeypatch):
    """An encoder plugin's PluginError raised in a Ray actor reached the user as "unexpected
    RayTaskError(UserCodeException): ray::MapWorker(...)" after Ray Data's traceback; now the error itself, and
    Ray Data's log records of it are dropped."""
    import logging

    from forensics.distributed.ray_engine import _forensics_cause, _unlogged_forensics_errors
    from forensics.errors import PluginError

    original = PluginError("encoder rt_nan (plugin runtime) returned NaN or infinite values at c1")

    class RayTaskErrorOfPluginError(PluginError):  # what Ray builds: the task's class, Ray's text, .cause
        cause = original

    wrapped = RayTaskErrorOfPluginError("ray::MapWorker(MapBatches(_EncoderActor)).submit() (pid=1)")
    assert _forensics_cause(wrapped) is original
    try:
        try:
            raise UsageError("cannot decode a.png")
        except UsageError as exc:
            raise RuntimeError("UDF failed to process a data block.") from exc
    except RuntimeError as exc:
        assert str(_forensics_cause(exc)) == "cannot decode a.png"
    assert _forensics_cause(RuntimeError("a Ray bug")) is None

    monkeypatch.delenv("FORENSICS_DEBUG", raising=False)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("ray.data")
    monkeypatch.setattr(log, "handlers", [handler])
    with _unlogged_forensics_errors():
        log.error("An exception was raised from a task", exc_info=wrapped)
        try:
            raise wrapped
        except PluginError:
            log.error("Exception occurred in Ray Data or Ray Core internal code")
        log.error("a Ray failure of its own", exc_info=RuntimeError("x"))
    assert seen == ["a Ray failure of its own"] and not handler.filters


def test_cuda_on_a_local_ray_instance_without_a_gpu_is_refused_before_ray_starts(monkeypatch, toy_protocol):
    """--device cuda --engine ray on a machine without CUDA started a local Ray instance (seconds), only to find
    it had no GPU; with no cluster to reach, that is known at once. A cluster's address is asked, not guessed."""
    import torch

    from forensics import distributed

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    started = []
    monkeypatch.setattr(distributed, "connect", lambda address=None: started.append(address))
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process (the module's Ray may be up)
    with pytest.raises(UsageError, match="starts a local Ray instance, and this machine has no CUDA GPU") as info:
        make_engine(toy_protocol(), engine="ray", device="cuda")
    assert started == [] and "\n" not in str(info.value)
    assert not distributed.starts_local("ray://head:10001") and distributed.starts_local(None)
