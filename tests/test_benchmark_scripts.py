"""The benchmark that measures attribution under batch sizes and post-processing (issue 25's table) runs end to
end, and its verdicts are the tool's: a batch it answers is answered the same by ``forensics.attribute``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_robust_attribution_answers_a_batch_as_attribute_does(tmp_path, bundled_registry):
    # and answers it the same from its records cache, kept part by part of the default combination
    from forensics import api

    samples = bundled_registry.reference_dir("mnist-effnet-lite0").parent / "samples"  # the zoo's, shared
    images = np.load(samples / "vae" / "heldout.npz")["images"][:100]
    sets = tmp_path / "sets"
    sets.mkdir()
    np.savez(sets / "vae-seed9.npz", images=images)
    np.savez(sets / "dcgan-seed4.npz", images=images)  # named as drawn by an enrolled run (dcgan/run4): no query
    cache = tmp_path / "cache"

    def measured() -> list[dict]:
        out = tmp_path / "out.json"
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robust_attribution.py"), "--sets", str(sets),
                              "--only", "vae-seed9,dcgan-seed4", "--curated", "0", "--conditions", "none",
                              "--sizes", "100", "--batches", "1", "--skip-loo", "--records-cache", str(cache),
                              "--json", str(out)],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "left out dcgan-seed4.npz: drawn by dcgan's enrolled run4" in run.stderr
        return json.loads(out.read_text())["rows"]

    rows = measured()
    assert len(list(cache.glob("*.npz"))) == len(api.open_protocol().parts) == 3
    again = measured()  # from the cache
    assert again == rows
    assert [(r["generator"], r["set"], r["condition"], r["size"], r["batch"]) for r in rows] == [
        ("vae", "vae-seed9", "none", 100, 0)]
    row = rows[0]
    result = api.attribute(images)
    verdict = result.verdict
    assert (row["verdict"], row["family"], row["reason"]) == (verdict.generator, verdict.family, verdict.reason)
    assert row["outcome"] in ("right", "family", "unknown", "wrong")
    assert row["left_out_outcome"] in ("unknown", "family", "wrong")


def test_statistic_separation_lists_every_statistic_of_the_encoder_per_condition():
    from forensics.plugins import get_encoder_factory

    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "statistic_separation.py"), "--pair", "gmm,vae",
                          "--conditions", "none,jpeg90"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    names = get_encoder_factory("pixel-statistics")().layer_names
    for block in run.stdout.split("\n\n")[1:]:
        listed = [line.split()[0] for line in block.strip().splitlines()[2:]]
        assert sorted(listed) == sorted(names), block
        ratios = [float(line.split()[1]) for line in block.strip().splitlines()[2:]]
        assert ratios == sorted(ratios, reverse=True)  # most separating first
    assert "none: gmm against vae" in run.stdout and "jpeg90: gmm against vae" in run.stdout


def test_robust_attribution_refuses_a_query_set_whose_name_does_not_say_its_generator(tmp_path, monkeypatch):
    import importlib.util

    import pytest

    for name in ("FORENSICS_THREADS", "OMP_NUM_THREADS"):  # what the script sets on import, put back after
        monkeypatch.setenv(name, "1")
    spec = importlib.util.spec_from_file_location("robust_attribution", ROOT / "benchmarks" / "robust_attribution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    np.savez(tmp_path / "evidence.npz", images=np.zeros((100, 28, 28), np.uint8))
    with pytest.raises(SystemExit, match=r"evidence\.npz: a query set's file is named <generator>-seed<N>\.npz"):
        module.query_sets(tmp_path)
    (tmp_path / "evidence.npz").rename(tmp_path / "vae-seed9.npz")
    assert [(g, name) for g, name, _ in module.query_sets(tmp_path)][-1] == ("vae", "vae-seed9")
