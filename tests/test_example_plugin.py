"""The example third-party plugin, installed the way users install plugins, is listed and used."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a pip install and a pytest run in a subprocess

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "forensics-example-encoder"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install the example (no deps, no build isolation: offline) into a private folder on sys.path."""
    work = tmp_path_factory.mktemp("example")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("forensics_example_encoder")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def test_installed_plugin_is_listed_and_used(installed):
    from forensics import plugins
    from forensics.api import list_encoders
    from forensics.encode.embed import embed
    from forensics.testing import check_encoder, sample_images

    host = plugins.PluginHost(autoload=True)
    info = host.info.get("example")
    assert info is not None and info.error is None and info.distribution == "forensics-example-encoder"
    assert not info.bundled
    provided = host.get("encoders", "example_colour_pyramid")
    assert provided.plugin == "example"
    encoder = provided.obj(image_size=32)
    out = embed(encoder, sample_images(n=3, size=40))
    assert [o.shape for o in out] == [(3, 768), (3, 192), (3, 48), (3, 12)]
    check_encoder(encoder)
    old = plugins.reset(host)
    try:
        entry = {e["name"]: e for e in list_encoders().encoders}["example_colour_pyramid"]
        assert [layer["name"] for layer in entry["layers"]] == ["pool.16", "pool.8", "pool.4", "pool.2"]
        assert entry["plugin"] == "example"
    finally:
        plugins.reset(old)


def test_autoload_off_hides_it(installed):
    from forensics import plugins

    host = plugins.PluginHost(autoload=False)
    assert "example" not in host.info
    assert "example_colour_pyramid" not in host.collect("encoders")


def test_the_example_runs_its_own_contract_tests(installed):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(EXAMPLE / "tests")], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(installed)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout
