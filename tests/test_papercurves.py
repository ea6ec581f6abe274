"""The paper's published curves as the protocol he2024-cifar10-vitb16."""

from __future__ import annotations

from pathlib import Path

import pytest

from forensics.errors import UsageError
from forensics.registry.papercurves import PROTOCOL_NAME, import_paper, paper_split, parse_curves, protocol, read_paper_curves
from forensics.registry.store import Registry

SRC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-curves"
needs_src = pytest.mark.skipif(not (SRC / "Ffull_score.txt").is_file(), reason="reference curves not present")


def test_protocol_record_says_how_the_curves_were_made():
    p = protocol()
    d = p.to_dict()
    assert d["train"] == {"dataset": "cifar10", "split": "train", "count": 50000, "sha256": None, "options": {}}
    assert d["test"] == {"dataset": "cifar10", "split": "test", "count": 10000, "sha256": None, "options": {}}
    enc = d["encoder"]
    assert enc["name"] == "vit_base_patch16_224.orig_in21k" and enc["weights"] is None and enc["pooling"] == "cls"
    assert enc["layers"] == [f"blocks.{i}" for i in range(12)]
    assert enc["preprocessing"] == {"size": 224, "resize": 256, "interpolation": "bilinear",
                                    "mean": [0.5] * 3, "std": [0.5] * 3}
    assert d["statistic"] == {"name": "ct", "params": {"k": 10, "distance": "cosine", "projection": 64,
                                                       "tau": None, "seed": 0}}
    assert d["batch_size"] == 500 and "LayerChoice" in d["notes"]["source"]


def test_bundled_protocol_matches_the_record():
    reg = Registry.open()
    assert reg.protocol(PROTOCOL_NAME).digest == protocol().digest
    refs = reg.enrolled(PROTOCOL_NAME)
    assert sorted({r.generator for r in refs}) == ["BigGAN", "ContraGAN", "DDIM", "DDPM", "PNDM", "SNGAN"]
    full_refs, queries = paper_split(refs, "full")
    assert len(full_refs) == 12 and len(queries) == 6
    assert all(q.provenance["role"] == "test_batch" for q in queries)
    small_refs, small_q = paper_split(refs, "small")
    assert len(small_refs) == 6 and [q.instance for q in small_q] == [q.instance for q in queries]
    for r in refs:
        p = r.provenance
        assert p["source"]["repository"] == "JackHe313/LayerChoice" and p["n_images"] == 500
        assert p["input_sha256"] is None and p["run"] == r.instance


@needs_src
def test_bundled_curves_are_the_published_ones():
    refs = Registry.open().enrolled(PROTOCOL_NAME)
    published = {values: label for label, values, _ in parse_curves(SRC / "Ffull_score.txt")}
    runs = {values: label for label, values, _ in parse_curves(SRC / "model_ct_scores.txt")}
    assert len(refs) == len(published) == 18
    for r in refs:
        values = r.fingerprint.values
        assert published[values].startswith(r.provenance["source"]["label"].split("_")[0])
        assert published[values] == r.provenance["source"]["label"]
        assert runs[values] == r.instance


@needs_src
def test_import_into_a_fresh_registry(tmp_path):
    result = import_paper(SRC, tmp_path / "reg")
    assert result["n_curves"] == 18 and len(result["generators"]) == 6
    reg = Registry.open(tmp_path / "reg")
    assert reg.validate() == [] and reg.default_protocol == PROTOCOL_NAME
    bundled = Registry.open()
    strip = lambda refs: sorted((r.generator, r.instance, r.fingerprint.values) for r in refs)  # noqa: E731
    assert strip(reg.enrolled(PROTOCOL_NAME)) == strip(bundled.enrolled(PROTOCOL_NAME))
    with pytest.raises(UsageError, match="--overwrite"):
        import_paper(SRC, reg)
    import_paper(SRC, reg, overwrite=True)
    assert len(Registry.open(tmp_path / "reg").enrolled(PROTOCOL_NAME)) == 18


@needs_src
def test_read_paper_curves_labels_and_runs():
    curves = read_paper_curves(SRC)
    assert len(curves) == 18
    assert sum(c.role == "test_batch" for c in curves) == 6
    assert {c.run for c in curves if c.generator == "DDPM"} == {"ddpm_1", "ddpm_2", "ddpm_3"}
