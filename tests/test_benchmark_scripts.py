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
    from forensics import api

    samples = bundled_registry.reference_dir("mnist-effnet-lite0").parent / "samples"  # the zoo's, shared
    images = np.load(samples / "vae" / "heldout.npz")["images"][:100]
    sets = tmp_path / "sets"
    sets.mkdir()
    np.savez(sets / "vae-seed9.npz", images=images)
    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robust_attribution.py"), "--sets", str(sets),
                          "--only", "vae-seed9", "--curated", "0", "--conditions", "none", "--sizes", "100",
                          "--batches", "1", "--skip-loo", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["generator"], r["set"], r["condition"], r["size"], r["batch"]) for r in rows] == [
        ("vae", "vae-seed9", "none", 100, 0)]
    row = rows[0]
    result = api.attribute(images)
    verdict = result.verdict
    assert (row["verdict"], row["family"], row["reason"]) == (verdict.generator, verdict.family, verdict.reason)
    assert row["outcome"] in ("right", "family", "unknown", "wrong")
    assert row["left_out_outcome"] in ("unknown", "family", "wrong")
