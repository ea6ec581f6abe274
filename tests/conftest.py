"""Test-suite conventions: offline, CPU, no installed third-party plugins, a private cache. Tests of the
device code take the ``torch_device`` fixture: "cpu" as a torch device everywhere, and "cuda" too where
a CUDA GPU is present (never in CI; see benchmarks/README.md for where they were run on one)."""

from __future__ import annotations

import os
import sys

import pytest

# Set before anything builds the plugin host: only the plugins bundled with forensics load.
os.environ["FORENSICS_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("FORENSICS_REGISTRY", None)
os.environ.pop("FORENSICS_DISABLE_PLUGINS", None)


def pytest_configure(config):
    # One BLAS/torch thread per test process: the suite runs with one pytest-xdist worker per core, and
    # small models slow down by an order of magnitude when threads of two processes compete for a core.
    import torch

    torch.set_num_threads(1)


def _torch_devices() -> list[str]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return ["cpu"]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_torch_devices())
def torch_device(request) -> str:
    """A torch device the statistic's device code is tested on: "cpu", and "cuda" where there is one."""
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches and the user registry written by tests go to temporary folders, never the user's."""
    old = {k: os.environ.get(k) for k in ("FORENSICS_CACHE_DIR", "FORENSICS_DATA_DIR")}
    os.environ["FORENSICS_CACHE_DIR"] = str(tmp_path_factory.mktemp("forensics-cache"))
    os.environ["FORENSICS_DATA_DIR"] = str(tmp_path_factory.mktemp("forensics-data"))
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def plugin_host():
    """A fresh process-wide plugin host for one test (bundled plugins only), restored afterwards."""
    from forensics import plugins

    host = plugins.PluginHost(autoload=False)
    old = plugins.reset(host)
    yield host
    plugins.reset(old)


@pytest.fixture
def register_plugin(plugin_host):
    """Register a test-local plugin object for one test: ``register_plugin(obj, "name")``."""

    def register(obj, name: str):
        plugin_host.add(obj, name)
        return plugin_host

    return register


class CountingEncoder:
    """Wraps an encoder and records every forward call's layers and batch size in ``calls``."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def forward_layers(self, pixels, layers):
        self.calls.append((tuple(layers), len(pixels)))
        return self.encoder.forward_layers(pixels, layers)


@pytest.fixture
def count_calls():
    """``count_calls(encoder)``: the encoder wrapped in a :class:`CountingEncoder`."""
    return CountingEncoder


TOY_DATA_SHA = "sha256:" + "ab" * 32


@pytest.fixture
def toy_protocol():
    """``toy_protocol(name="toy", layers=3, k=3)``: a C_T protocol over the digits, with a random-weights
    encoder of ``layers`` layers, for registry tests that never embed an image."""
    from forensics.protocol import DataRef, EncoderRef, Protocol, StatisticRef

    def make(name: str = "toy", layers: int = 3, k: int = 3) -> Protocol:
        return Protocol(
            name=name, train=DataRef("digits", "train", 100, TOY_DATA_SHA),
            test=DataRef("digits", "test", 50, TOY_DATA_SHA),
            encoder=EncoderRef("tiny", TOY_DATA_SHA, "random", tuple(f"l{i}" for i in range(layers)), "mean",
                               {"size": 8, "resize": 8, "interpolation": "bilinear", "mean": [0.5] * 3,
                                "std": [0.5] * 3}),
            statistic=StatisticRef("ct", {"k": k, "distance": "cosine", "projection": None, "tau": None, "seed": 0}),
            batch_size=10, description="a toy protocol")

    return make


@pytest.fixture
def fingerprints():
    """``fingerprints(protocol, *curves)``: one fingerprint of ``protocol`` per curve of values."""
    from forensics.protocol import Fingerprint

    def make(protocol, *curves):
        return [Fingerprint.from_values(protocol.digest, c) for c in curves]

    return make


@pytest.fixture(scope="module")
def bundled_registry():
    """The registry bundled with forensics (tests only read it)."""
    from forensics.registry import Registry

    return Registry.open()


@pytest.fixture(scope="session")
def zoo_reference_sets() -> set[tuple[str, str]]:
    """The zoo's reference sample sets (every ``run<seed>`` in its manifest) as (generator,
    content hash of the images): what the bundled registry must have enrolled under every MNIST protocol."""
    from forensics.io.images import load_images
    from forensics.zoo.catalog import is_reference, read_manifest, samples_dir

    return {(z.generator, load_images(z.path)[1]) for z in read_manifest(samples_dir())
            if is_reference(z.instance)}


@pytest.fixture(scope="module")
def shipped_engine(request, bundled_registry):
    """The engine for the test module's ``PROTOCOL`` (a protocol or a combination) that reads the reference
    side shipped in the bundled registry: bundled plugins only, no user cache, the reference loaded once
    per module."""
    from forensics import plugins
    from forensics.engine import make_engine

    name = request.module.PROTOCOL
    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        engine = make_engine(bundled_registry.protocol(name), reference_dir=bundled_registry.reference_dir,
                             use_cache=False)
        for part in getattr(engine, "engines", [engine]):
            part.reference_side()
        yield engine
    finally:
        plugins.reset(old)


@pytest.fixture
def user(monkeypatch, tmp_path):
    """A fresh, empty user registry over the bundled one (it does not exist yet; no $FORENSICS_REGISTRY), a
    private cache, offline: its path."""
    monkeypatch.delenv("FORENSICS_REGISTRY", raising=False)
    monkeypatch.setenv("FORENSICS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FORENSICS_OFFLINE", "1")
    return tmp_path / "data" / "registry"


def fingerprint_of(path) -> dict[str, tuple[int, int, str | None]]:
    """Every file under ``path``: size, mtime and (for text) its sha256, to show that nothing changed."""
    import hashlib

    state = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = f.stat()
        digest = hashlib.sha256(f.read_bytes()).hexdigest() if f.suffix in (".yaml", ".json", "") else None
        state[str(f.relative_to(path))] = (stat.st_size, stat.st_mtime_ns, digest)
    return state


@pytest.fixture
def bundled_unchanged():
    """Asserts, after the test, that the bundled registry is as it was."""
    from forensics.registry import bundled_registry_path

    before = fingerprint_of(bundled_registry_path())
    yield
    assert fingerprint_of(bundled_registry_path()) == before


@pytest.fixture
def without(monkeypatch):
    """``without("matplotlib", ...)``: those modules cannot be imported for the test (as if not installed)."""

    def hide(*modules: str) -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in modules:
                monkeypatch.delitem(sys.modules, name)
        for name in modules:
            monkeypatch.setitem(sys.modules, name, None)

    return hide
