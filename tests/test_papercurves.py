"""The paper's published curves as the protocol he2024-cifar10-vitb16: the bundled entries are the
release's files to the byte, and importing those files gives the bundled entries back.

Everything is read from the project: the release's curve files are written out of the bundled registry
(:func:`export_paper`), and the two files the import also reads (the small split, the FIDs) are built here
from what the registry recorded of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forensics.errors import RegistryError, UsageError
from forensics.io.hashing import sha256_file
from forensics.registry import Registry
from forensics.registry.papercurves import (
    CURVES_FILE, FID_FILE, PROTOCOL_NAME, RUNS_FILE, SMALL_FILE, export_paper, import_paper, paper_split, parse_curves,
    protocol, read_paper_curves,
)

# SHA-256 of Ffull_score.txt and model_ct_scores.txt in the public release (github JackHe313/LayerChoice,
# commit "submited version", 2024-07-31)
PUBLISHED_SHA256 = {
    CURVES_FILE: "sha256:8c295dc9f3bed1dd37b2f5ec476643be8258cbeff0021adc287b764838fad71b",
    RUNS_FILE: "sha256:623b231d4beadba2f4f7863a01d70eb5fbefd9edb0304ed0cb768265e17851c8",
}
GENERATORS = ["BigGAN", "ContraGAN", "DDIM", "DDPM", "PNDM", "SNGAN"]
# the provenance keys an import writes anew each time
WRITTEN_AT_IMPORT = {"created", "tool_version"}


@pytest.fixture(scope="module")
def bundled():
    return Registry.open().enrolled(PROTOCOL_NAME)


@pytest.fixture(scope="module")
def release(bundled, tmp_path_factory) -> Path:
    """The release's folder as the import reads it: its two curve files written from the bundled registry,
    the small split's file and the FID list rebuilt from what the import recorded of them."""
    src = export_paper(Registry.open(), tmp_path_factory.mktemp("paper-curves"))
    role_label = {"reference": "train_batch", "query": "test_batch"}
    small, fids = [], []
    for r in bundled:
        label, values = r.provenance["source"]["label"], list(r.fingerprint.values)
        role = r.provenance["split"]["small"]
        if role != "unused":
            small.append(f"{label.partition('_')[0]}_{role_label[role]}: {values}\n")
        cls, _, tag = r.provenance["run"].partition("_")
        folder = f"/samples/CIFAR10-{cls}-train-2022_{tag}/fake" if cls[0].isupper() else f"/samples/{cls}{tag}"
        fids.append(f"{folder} {r.provenance['fid']!r}\n")
    (src / SMALL_FILE).write_text("".join(small))
    (src / FID_FILE).write_text("".join(fids))
    return src


def test_protocol_record_says_how_the_curves_were_made():
    d = protocol().to_dict()
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


def test_bundled_protocol_is_the_record_and_holds_the_papers_split(bundled):
    assert Registry.open().protocol(PROTOCOL_NAME).digest == protocol().digest
    assert sorted({r.generator for r in bundled}) == GENERATORS
    full_refs, queries = paper_split(bundled, "full")
    assert len(full_refs) == 12 and len(queries) == 6
    assert sorted(q.generator for q in queries) == GENERATORS
    assert all(q.provenance["role"] == "test_batch" for q in queries)
    small_refs, small_queries = paper_split(bundled, "small")
    assert sorted(r.generator for r in small_refs) == GENERATORS
    assert [q.instance for q in small_queries] == [q.instance for q in queries]
    for r in bundled:
        p = r.provenance
        assert p["source"]["repository"] == "JackHe313/LayerChoice" and p["n_images"] == 500
        assert p["input_sha256"] is None and p["run"] == r.instance


def test_bundled_curves_are_the_published_files_byte_for_byte(release, bundled):
    for name, digest in PUBLISHED_SHA256.items():
        assert sha256_file(release / name) == digest
    published = {values: label for label, values, _ in parse_curves(release / CURVES_FILE)}
    assert len(bundled) == len(published) == 18
    assert all(published[r.fingerprint.values] == r.provenance["source"]["label"] for r in bundled)


def test_export_refuses_curves_that_are_not_the_published_ones(tmp_path):
    reg = Registry.open()
    reg.copy_to(tmp_path / "reg")
    gfile = tmp_path / "reg" / PROTOCOL_NAME / "generators" / "DDPM.yaml"
    text = gfile.read_text()
    gfile.write_text(text.replace("curve: [0.0216072150533158,", "curve: [0.0216072150533159,", 1))
    with pytest.raises(RegistryError, match=f"{CURVES_FILE} rebuilt .* not the published ones"):
        export_paper(Registry.open(tmp_path / "reg"), tmp_path / "out")


def test_read_paper_curves_labels_roles_and_runs(release):
    curves = read_paper_curves(release)
    assert len(curves) == 18 and sum(c.role == "test_batch" for c in curves) == 6
    assert {c.run for c in curves if c.generator == "DDPM"} == {"ddpm_1", "ddpm_2", "ddpm_3"}
    assert [c.line for c in curves] == list(range(1, 19))


@pytest.mark.slow
def test_import_reproduces_the_bundled_entries(release, bundled, tmp_path):
    result = import_paper(release, tmp_path / "reg")
    assert result["n_curves"] == 18 and sorted(result["generators"]) == GENERATORS
    reg = Registry.open(tmp_path / "reg")
    assert reg.validate() == [] and reg.default_protocol == PROTOCOL_NAME

    def entries(refs):
        return sorted((r.generator, r.instance, r.fingerprint.values,
                       {k: v for k, v in r.provenance.items() if k not in WRITTEN_AT_IMPORT}) for r in refs)

    assert entries(reg.enrolled(PROTOCOL_NAME)) == entries(bundled)
    with pytest.raises(UsageError, match="--overwrite"):
        import_paper(release, reg)
    import_paper(release, reg, overwrite=True)
    assert entries(Registry.open(tmp_path / "reg").enrolled(PROTOCOL_NAME)) == entries(bundled)


@pytest.mark.parametrize("line,message", [
    ("BigGAN_train_batch [1.0, 2.0", r"line 1: expected 'name: \[v, v, …\]'"),
    ("BigGAN_train_batch: [1.0, two]", r"line 1: 'two' is not a number"),
    ("VAE_train_batch: [1.0]", r"line 1: unexpected label 'VAE_train_batch'"),
    ("BigGAN_val_batch: [1.0]", r"line 1: unexpected label"),
])
def test_malformed_release_files_name_the_line(tmp_path, line, message):
    (tmp_path / CURVES_FILE).write_text(line + "\n")
    with pytest.raises(RegistryError, match=message):
        read_paper_curves(tmp_path)


def test_import_refuses_curves_of_another_length_and_a_missing_folder(tmp_path):
    (tmp_path / CURVES_FILE).write_text("\nBigGAN_train_batch: [1.0, nan, 3.0]\n")
    assert parse_curves(tmp_path / CURVES_FILE) == [("BigGAN_train_batch", (1.0, None, 3.0), 2)]
    with pytest.raises(RegistryError, match="line 2: 3 values, expected 12"):
        import_paper(tmp_path, tmp_path / "reg")
    with pytest.raises(UsageError, match="point at the paper-curves folder"):
        read_paper_curves(tmp_path / "elsewhere")
