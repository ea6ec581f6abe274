"""``forensics protocol remove``: a protocol of the written registry goes whole (its generators, calibration,
records, reference side), after confirmation, the shared cache untouched but for `cache clear --unused`; a
bundled protocol, one a combination combines, and a removal that was not confirmed change nothing; a removal
killed midway is finished by the next write."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import forensics
from forensics import schemas
from forensics.encode.cache import EmbeddingCache, embedding_key
from forensics.engine import reference_key
from forensics.errors import UsageError
from forensics.io.hashing import short
from forensics.protocol import Combination
from forensics.registry import Registry, bundled_registry_path
from forensics.registry.store import REMOVING

pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed

VIT = "mnist-vit"
MINE = "my-vit"


def state(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` with its sha256: what must not change."""
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest()
            for root in roots if root.exists() for f in sorted(root.rglob("*")) if f.is_file()}


def cli(*args: str, code: int = 0):
    from forensics.cli.commands import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output)
    return result


@pytest.fixture
def mine(user, fingerprints):
    """In a user registry over the bundled one: ``my-vit``, mnist-vit's protocol with another k-means seed (its
    own reference side, mnist-vit's embeddings), made the default, two generators enrolled under it, a reference
    side shipped beside it; in the cache, that reference side (serving it alone), mnist-vit's (serving that
    alone) and the P_n embeddings both share."""
    reg = Registry.open()
    vit = reg.protocol(VIT)
    proto = dataclasses.replace(vit, name=MINE, statistic=dataclasses.replace(
        vit.statistic, params={**vit.statistic.params, "seed": 1}))
    reg.add_protocol(proto, default=True)
    for gen, offset in (("gan", 0.0), ("vae", 1.0)):
        curves = [[offset + 0.1 * i + 0.01 * b for i in range(len(proto.layers))] for b in range(2)]
        reg.enroll(MINE, gen, fingerprints(reg.protocol(MINE), *curves), {"input_sha256": "sha256:" + f"{b}" * 64
                                                                          for b in [int(offset) + 1]})
    reg.ship_reference(MINE, "side.npz", lambda path: path.write_bytes(b"2" * 64))
    cache = Path(forensics.list_cache().cache)
    (cache / "reference").mkdir(parents=True)
    for p in (proto, vit):
        (cache / "reference" / f"{short(reference_key(p), 24)}.npz").write_bytes(b"0" * 100)
    key = embedding_key(images=vit.test.sha256, encoder={"name": vit.encoder.name}, layer=vit.layers[0])
    EmbeddingCache().put(key, np.ones((10, 4), np.float32),
                         what={"images": vit.test.sha256, "encoder": vit.encoder.name, "layer": vit.layers[0]})
    return Registry.open()


def test_removes_the_protocol_whole_and_leaves_the_shared_cache(mine, bundled_unchanged):
    cache = Path(forensics.list_cache().cache)
    served = {i.path: i.protocols for i in forensics.list_cache().items}
    assert sorted(served.values()) == [(VIT,), (VIT, MINE), (MINE,)]  # the P_n embeddings serve both
    cached = state(cache)
    result = forensics.remove_protocol(MINE)
    assert result.confirmed and result.generators == ("gan", "vae") and result.n_instances == 4
    assert result.n_files >= 5 and result.size > 0  # protocol.yaml, two generator files, the side and its digest
    assert [i.protocols for i in result.cache_served] == [(MINE,)]
    assert not (mine.path / MINE).exists() and not list(mine.path.glob(f".*{REMOVING}"))
    after = Registry.open()
    assert MINE not in after.protocols and after.validate() == []
    assert after.default_protocol == Registry.open(bundled_registry_path()).default_protocol  # the bundled one's again
    assert result.was_default and result.default_protocol == after.default_protocol
    assert state(cache) == cached  # every registry shares the cache: a copy of this one may read those entries
    assert sorted(i.protocols for i in forensics.list_cache().items) == [(), (VIT,), (VIT,)]
    freed = forensics.clear_cache(unused=True)  # what serves no protocol of the registry now: the side it fitted
    assert [i.path for i in freed.removed] == [i.path for i in result.cache_served]
    assert sorted(i.protocols for i in forensics.list_cache().items) == [(VIT,), (VIT,)]
    assert schemas.validate(result.to_dict()) is None


def test_a_single_registry_is_left_without_a_default(tmp_path, toy_protocol):
    reg = Registry.open(tmp_path / "reg", create=True)
    reg.add_protocol(toy_protocol(), default=True)
    reg.add_protocol(toy_protocol("other"))
    forensics.remove_protocol("toy", registry=reg.path)
    after = Registry.open(reg.path)
    assert after.default_protocol is None and list(after.protocols) == ["other"] and after.validate() == []
    with pytest.raises(UsageError, match="names no default protocol"):
        after.resolve_protocol(None)


def test_refusals_change_nothing(mine, bundled_unchanged):
    before = state(mine.path, Path(forensics.list_cache().cache))
    with pytest.raises(UsageError, match=r"comes with forensics .* cannot be removed"):
        forensics.remove_protocol(VIT)
    with pytest.raises(UsageError, match="no protocol 'nope'"):
        forensics.remove_protocol("nope")
    with pytest.raises(UsageError, match="protocol name"):
        forensics.remove_protocol("../data")
    assert state(mine.path, Path(forensics.list_cache().cache)) == before
    mine.add_protocol(Combination("mine-both", (mine.protocol(MINE), mine.protocol("mnist-pixel"))))
    with pytest.raises(UsageError, match=r"combined in mine-both: remove that combination first"):
        forensics.remove_protocol(MINE)
    assert state(mine.path / MINE) == {k: v for k, v in before.items() if k.startswith(str(mine.path / MINE))}
    forensics.remove_protocol("mine-both")  # the combination first, then the protocol it combined
    assert "mine-both" not in Registry.open().protocols and MINE in Registry.open().protocols
    snapshot = state(mine.path, Path(forensics.list_cache().cache))
    asked = []
    said_no = forensics.remove_protocol(MINE, confirm=lambda plan: asked.append(plan) or False)
    assert not said_no.confirmed and asked[0].generators == ("gan", "vae") and asked[0].n_instances == 4
    assert state(mine.path, Path(forensics.list_cache().cache)) == snapshot
    forensics.remove_protocol(MINE)
    assert MINE not in Registry.open().protocols


def test_a_removal_killed_midway_is_finished_by_the_next_write(tmp_path, toy_protocol):
    reg = Registry.open(tmp_path / "reg", create=True)
    reg.add_protocol(toy_protocol(), default=True)
    aside = reg.path / f".gone{REMOVING}"
    (aside / "generators").mkdir(parents=True)  # a folder renamed aside, not yet deleted
    (aside / "generators" / "gan.yaml").write_text("not read")
    assert list(Registry.open(reg.path).protocols) == ["toy"]  # hidden: never read as a protocol
    reg.add_protocol(toy_protocol("other"))
    assert not aside.exists() and sorted(Registry.open(reg.path).protocols) == ["other", "toy"]


def test_command_line_asks_first_and_says_what_went(mine, bundled_unchanged):
    before = state(mine.path)
    refused = cli("protocol", "remove", MINE, code=2)  # stdin is not a terminal: --yes is needed
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "add --yes" in lines[0]
    assert "2 generators (4 instances)" in lines[0]
    assert state(mine.path) == before
    done = cli("protocol", "remove", MINE, "--yes", "--json")
    doc = json.loads(done.stdout)
    assert doc["schema"] == "forensics.protocol-removal/1" and doc["confirmed"] and doc["was_default"]
    schemas.validate(doc)
    assert "was the default protocol; the default is now" in done.stderr
    assert "1 cache entry" in done.stderr and "cache clear --unused" in done.stderr
    assert MINE not in Registry.open().protocols
    cli("protocol", "remove", MINE, "--yes", code=2)  # gone: an unknown name
