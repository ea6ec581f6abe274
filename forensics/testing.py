"""The contracts plugins must meet, as check functions and as pytest classes to inherit: encoders
(:class:`EncoderContract`), statistics (:class:`StatisticContract`), matchers (:class:`MatcherContract`) and
InvMM's diffusion models (:class:`DiffusionModelContract`).

Encoders
--------

For plugin authors::

    # tests/test_my_encoder.py
    import pytest
    from forensics.testing import EncoderContract

    class TestMyEncoder(EncoderContract):
        @pytest.fixture(scope="class")
        @classmethod
        def encoder(cls):
            return make_my_encoder(weights="random", image_size=32)

Every bundled encoder passes the same class. Without pytest, :func:`check_encoder` runs every check and
raises :class:`AssertionError` naming the first broken one. The checks:

- **declared layers**: names unique, sizes positive, and ``forward_layers`` returns one (B, dim) float
  tensor per requested layer, in order, with the declared sizes (all layers, and any subset);
- **subsets**: the embedding of a layer is the same whether asked for alone or with all the others;
- **determinism**: the same images give the same embeddings twice;
- **batch invariance**: embedding in batches of 1, 2 and all at once gives the same values;
- **identity and preprocessing recorded**: ``identity()`` is JSON-able and carries name, weights digest,
  layers, pooling and a preprocessing that round-trips; options are JSON-able;
- **unknown layers** are refused with a :class:`forensics.errors.UsageError`.

Statistics
----------
::

    class TestMyStatistic(StatisticContract):
        @pytest.fixture(scope="class")
        @classmethod
        def statistic(cls):
            return MyStatistic()

:func:`check_statistic` runs every check: the declared attributes (:class:`forensics.stats.base.Statistic`),
**determinism** (two fits are equal, array for array), **order invariance** (the generated batch is a
set: shuffling it does not move the value), the **round trip** through ``to_arrays``/``from_arrays`` and an
``.npz`` file without pickle (the same value, exactly), the **score** (a float value, a counted weight in
[0, 1] or None, a reading among :data:`forensics.stats.base.READINGS`), **device** (``to("cpu")`` scores
the same) and **errors** (embeddings of the wrong shape raise :class:`forensics.errors.ForensicsError`).

Diffusion models (InvMM)
------------------------
::

    class TestMyModel(DiffusionModelContract):
        @pytest.fixture(scope="class")
        @classmethod
        def model(cls):
            return load_my_model(device="cpu")

:func:`check_diffusion_model` runs every check: the **schedule** (ᾱ_t float, T values in (0, 1],
non-increasing), the **shapes** (ε has x_t's shape; encode/decode map images to ``sample_shape`` and back),
**frozen** (ε carries no gradient from the model's own parameters), the **DDIM timesteps** (descending,
within 0 … T−1, ``steps`` of them at most) and, for a text-conditioned model, the **soft prompt** (a condition
from token weights that gradients reach, and an unconditional one of the same batch).

Matchers
--------
::

    class TestMyMatcher(MatcherContract):
        @pytest.fixture(scope="class")
        @classmethod
        def matcher_factory(cls):
            return MyMatcher            # called with options: MyMatcher(open_set=False), ...

:func:`check_matcher` runs every check on well-separated synthetic generators
(:func:`sample_references`): the **contract** (a concrete :class:`forensics.match.Matcher`, JSON-able
options that rebuild it), **errors** (unfitted, empty or too few generators, a query of another length or
protocol), **ranking** (one candidate per generator, best first, every enrolled curve ranks its own
generator first), **determinism** (the order of the references does not change a score), **calibration**
(its points equal the refitting default's, a recorded calibration is reused, a generator left out comes
out "unknown") and a JSON-able **description**.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple
from typing import Any

import numpy as np
import torch

from forensics.encode.encoder import Encoder, Preprocessing
from forensics.errors import ForensicsError, ProtocolMismatch, UsageError
from forensics.io.hashing import is_digest
from forensics.match import Candidate, EnrolledCurve, Matcher, contract_problems, refit_points
from forensics.protocol import Fingerprint
from forensics.stats import base as stats_base

RTOL = 1e-4
ATOL = 1e-4


def sample_images(n: int = 4, size: int = 40, seed: int = 0) -> np.ndarray:
    """Small deterministic uint8 RGB test images with some structure (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    images = []
    for i in range(n):
        base = np.stack([xx * (i + 1) % 1.0, yy, (xx + yy) / 2], axis=-1) * 200
        images.append(np.clip(base + rng.normal(0, 25, base.shape), 0, 255))
    return np.asarray(images, dtype=np.uint8)


def _embed(encoder: Encoder, images: np.ndarray, layers: Sequence[str] | None, batch_size: int) -> list[np.ndarray]:
    from forensics.encode.embed import embed

    return embed(encoder, images, layers=layers, batch_size=batch_size)


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> bool:
    scale = max(float(np.abs(b).max()), 1.0)
    return bool(np.allclose(a, b, rtol=rtol, atol=atol * scale))


def check_declared_layers(encoder: Encoder, images: np.ndarray | None = None) -> None:
    images = sample_images() if images is None else images
    names = [layer.name for layer in encoder.layers]
    assert names, f"{encoder.name} declares no layers"
    assert len(set(names)) == len(names), f"{encoder.name} declares a layer twice: {names}"
    assert all(isinstance(layer.dim, int) and layer.dim > 0 for layer in encoder.layers), \
        f"{encoder.name} declares a non-positive layer size"
    from forensics.encode.encoder import preprocess

    pixels = preprocess(images, encoder.preprocessing)
    for request in (names, names[-1:], names[:1], names[::2]):
        outs = encoder.forward_layers(pixels, request)
        assert len(outs) == len(request), f"{encoder.name}: asked for {len(request)} layers, got {len(outs)}"
        for name, out in zip(request, outs):
            dim = encoder.layer_dims([name])[name]
            assert isinstance(out, torch.Tensor) and out.dtype == torch.float32, \
                f"{encoder.name} {name}: expected a float32 tensor, got {getattr(out, 'dtype', type(out))}"
            assert tuple(out.shape) == (len(images), dim), \
                f"{encoder.name} {name}: declared ({len(images)}, {dim}), returned {tuple(out.shape)}"
            assert torch.isfinite(out).all(), f"{encoder.name} {name}: non-finite values"


def check_layer_subsets(encoder: Encoder, images: np.ndarray | None = None, *, rtol: float = RTOL,
                        atol: float = ATOL) -> None:
    images = sample_images() if images is None else images
    full = _embed(encoder, images, None, len(images))
    names = list(encoder.layer_names)
    for i in sorted({0, len(names) // 2, len(names) - 1}):
        alone = _embed(encoder, images, [names[i]], len(images))[0]
        assert _close(alone, full[i], rtol, atol), f"{encoder.name} {names[i]}: differs when asked for alone"


def check_determinism(encoder: Encoder, images: np.ndarray | None = None) -> None:
    images = sample_images() if images is None else images
    a = _embed(encoder, images, None, len(images))
    b = _embed(encoder, images, None, len(images))
    for name, x, y in zip(encoder.layer_names, a, b):
        assert np.array_equal(x, y), f"{encoder.name} {name}: two runs on the same images differ"


def check_batch_invariance(encoder: Encoder, images: np.ndarray | None = None, *, rtol: float = RTOL,
                           atol: float = ATOL) -> None:
    images = sample_images() if images is None else images
    whole = _embed(encoder, images, None, len(images))
    for batch_size in (1, 2):
        parts = _embed(encoder, images, None, batch_size)
        for name, x, y in zip(encoder.layer_names, parts, whole):
            assert _close(x, y, rtol, atol), \
                f"{encoder.name} {name}: batch size {batch_size} changes the embedding (max diff {np.abs(x - y).max():.3g})"


def check_identity(encoder: Encoder) -> None:
    identity = encoder.identity()
    text = json.dumps(identity, allow_nan=False)  # JSON-able
    assert identity["name"] == encoder.name
    assert is_digest(identity["weights"]), f"{encoder.name}: weights digest {identity['weights']!r} is not a sha256"
    assert identity["weights_source"] in ("file", "package", "cache", "random"), identity["weights_source"]
    assert identity["layers"] == list(encoder.layer_names)
    assert isinstance(identity["pooling"], str) and identity["pooling"]
    prep = Preprocessing.from_dict(json.loads(text)["preprocessing"])
    assert prep == encoder.preprocessing, f"{encoder.name}: preprocessing does not round-trip through JSON"
    json.dumps(dict(encoder.options or {}), allow_nan=False)
    assert encoder.identity([encoder.layer_names[-1]])["layers"] == [encoder.layer_names[-1]]


def check_unknown_layer(encoder: Encoder) -> None:
    try:
        encoder.check_layers(["no-such-layer"])
    except UsageError:
        return
    raise AssertionError(f"{encoder.name}: an unknown layer name was accepted")


CHECKS = (check_declared_layers, check_layer_subsets, check_determinism, check_batch_invariance, check_identity,
          check_unknown_layer)


def check_encoder(encoder: Encoder, images: np.ndarray | None = None) -> None:
    """Run every check of the contract on ``encoder``; an :class:`AssertionError` names what broke."""
    images = sample_images() if images is None else images
    for check in CHECKS:
        if check in (check_identity, check_unknown_layer):
            check(encoder)
        else:
            check(encoder, images)



# -- statistics ------------------------------------------------------------------------------------
Embeddings = tuple[np.ndarray, np.ndarray, np.ndarray]


def sample_embeddings(dim: int = 8, seed: int = 0) -> Embeddings:
    """(train T, test P_n, generated) embeddings of one layer: 400, 200 and 400 Gaussian points."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(400, dim)), rng.normal(size=(200, dim)), rng.normal(size=(400, dim))


def _fit(statistic: stats_base.Statistic, data: Embeddings, params: Mapping[str, Any]) -> stats_base.FittedStatistic:
    fit_params, _ = stats_base.split_params(statistic, params)
    return statistic.fit(data[0], data[1], **fit_params)


def _value(fitted: stats_base.FittedStatistic, statistic: stats_base.Statistic, generated: np.ndarray,
           params: Mapping[str, Any]) -> float:
    _, score_params = stats_base.split_params(statistic, params)
    return float(fitted.score(generated, **score_params).value)


def check_statistic_declared(statistic: stats_base.Statistic, params: Mapping[str, Any] | None = None) -> None:
    problems = stats_base.contract_problems(statistic)
    assert not problems, f"{type(statistic).__name__}: {'; '.join(problems)}"
    full = stats_base.resolve_params(statistic, params or {})
    json.dumps(full, allow_nan=False)  # recorded in protocols
    json.dumps(dict(statistic.reading_thresholds), allow_nan=False)
    assert statistic.reading(None) == "undefined", "reading(None) must be 'undefined'"


def check_statistic_determinism(statistic: stats_base.Statistic, data: Embeddings | None = None,
                                params: Mapping[str, Any] | None = None) -> None:
    data = sample_embeddings() if data is None else data
    params = params or {}
    a, b = _fit(statistic, data, params), _fit(statistic, data, params)
    arrays_a, arrays_b = a.to_arrays(), b.to_arrays()
    assert sorted(arrays_a) == sorted(arrays_b), "two fits on the same data store different arrays"
    for key in arrays_a:
        assert np.array_equal(arrays_a[key], arrays_b[key]), f"two fits on the same data differ in {key!r}"
    assert _value(a, statistic, data[2], params) == _value(b, statistic, data[2], params), \
        "two fits on the same data score differently"


def check_statistic_order_invariance(statistic: stats_base.Statistic, data: Embeddings | None = None,
                                     params: Mapping[str, Any] | None = None, *, rtol: float = 1e-9) -> None:
    data = sample_embeddings() if data is None else data
    params = params or {}
    fitted = _fit(statistic, data, params)
    value = _value(fitted, statistic, data[2], params)
    order = np.random.default_rng(1).permutation(len(data[2]))
    shuffled = _value(fitted, statistic, data[2][order], params)
    assert math.isclose(value, shuffled, rel_tol=rtol, abs_tol=rtol), \
        f"shuffling the generated batch moves the value: {value!r} vs {shuffled!r}"


def check_statistic_round_trip(statistic: stats_base.Statistic, data: Embeddings | None = None,
                               params: Mapping[str, Any] | None = None) -> None:
    data = sample_embeddings() if data is None else data
    params = params or {}
    fitted = _fit(statistic, data, params)
    arrays = fitted.to_arrays()
    assert arrays and all(isinstance(k, str) and "/" not in k for k in arrays), \
        "to_arrays() must give a non-empty dict with plain string keys (no '/')"
    assert all(isinstance(v, np.ndarray) for v in arrays.values()), "to_arrays() values must be numpy arrays"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as stored:  # what the reference-side cache does
        loaded = statistic.from_arrays({k: stored[k] for k in stored.files})
    expected = _value(fitted, statistic, data[2], params)
    assert _value(loaded, statistic, data[2], params) == expected, \
        "a fit read back from its arrays scores differently"


def check_statistic_score(statistic: stats_base.Statistic, data: Embeddings | None = None,
                          params: Mapping[str, Any] | None = None) -> None:
    data = sample_embeddings() if data is None else data
    params = params or {}
    fitted = _fit(statistic, data, params)
    _, score_params = stats_base.split_params(statistic, params)
    result = fitted.score(data[2], **score_params)
    assert isinstance(result.value, float) and math.isfinite(result.value), \
        f"score().value must be a finite float, got {result.value!r}"
    weight = result.counted_weight
    assert weight is None or 0.0 <= float(weight) <= 1.0, f"counted_weight must be None or in [0, 1], got {weight!r}"
    assert statistic.reading(result.value) in stats_base.READINGS, \
        f"reading({result.value}) = {statistic.reading(result.value)!r} is not one of {stats_base.READINGS}"
    if statistic.devices:
        assert _value(fitted.to("cpu"), statistic, data[2], params) == result.value, \
            "to('cpu') changes the value"
    if callable(getattr(statistic, "batch_params", None)):  # what an engine scores with, at any protocol m
        for m in (len(data[2]), 4 * len(data[2])):
            resolved = statistic.batch_params(dict(score_params), m)
            assert isinstance(resolved, Mapping), f"batch_params() must return a mapping, got {type(resolved).__name__}"
            value = fitted.score(data[2], **resolved).value
            assert isinstance(value, float) and math.isfinite(value), \
                f"score(**batch_params(…, {m})).value must be a finite float, got {value!r}"
    if callable(getattr(statistic, "combine", None)):  # a set scored in parts, one per condition
        n_test = len(data[1])
        one = statistic.combine([result.value], [len(data[2])], n_test)
        assert math.isclose(one, result.value, rel_tol=1e-12, abs_tol=1e-12), \
            f"combine() of one part must be its value, got {one!r} for {result.value!r}"
        assert statistic.combine([None, None], [3, 4], n_test) is None, "combine() of undefined parts must be None"
        half = fitted.score(data[2][: len(data[2]) // 2], **score_params).value
        pair = ([result.value, half], [len(data[2]), len(data[2]) // 2])
        both = statistic.combine(*pair, n_test)
        assert isinstance(both, float) and math.isfinite(both), f"combine() must give a finite float, got {both!r}"
        assert math.isclose(statistic.combine(pair[0][::-1], pair[1][::-1], n_test), both, rel_tol=1e-12,
                            abs_tol=1e-12), \
            "combine() must not depend on the order of the parts"


def check_statistic_errors(statistic: stats_base.Statistic, data: Embeddings | None = None,
                           params: Mapping[str, Any] | None = None) -> None:
    data = sample_embeddings() if data is None else data
    params = params or {}
    fitted = _fit(statistic, data, params)
    _, score_params = stats_base.split_params(statistic, params)
    fit_params, _ = stats_base.split_params(statistic, params)
    bad = {"generated of another dimension": lambda: fitted.score(data[2][:, :-1], **score_params),
           "a 1-D generated array": lambda: fitted.score(data[2][:, 0], **score_params),
           "train and test of different dimensions": lambda: statistic.fit(data[0], data[1][:, :-1], **fit_params)}
    for what, call in bad.items():
        try:
            call()
        except ForensicsError:
            continue
        except Exception as exc:  # noqa: BLE001 - the check names what was raised instead
            raise AssertionError(f"{what}: raised {type(exc).__name__}, not a ForensicsError") from exc
        raise AssertionError(f"{what}: accepted, should raise a ForensicsError")
    try:
        stats_base.resolve_params(statistic, {"no_such_parameter": 1})
    except UsageError:
        return
    raise AssertionError("an unknown parameter was accepted")


STATISTIC_CHECKS = (check_statistic_determinism, check_statistic_order_invariance, check_statistic_round_trip,
                    check_statistic_score, check_statistic_errors)


def check_statistic(statistic: stats_base.Statistic, data: Embeddings | None = None,
                    params: Mapping[str, Any] | None = None) -> None:
    """Run every statistic check; ``params`` overrides the statistic's defaults (e.g. fewer cells for
    the small sample). An :class:`AssertionError` names what broke."""
    check_statistic_declared(statistic, params)
    for check in STATISTIC_CHECKS:
        check(statistic, data, params)


# -- matchers --------------------------------------------------------------------------------------
MatcherFactory = Callable[..., Matcher]
SAMPLE_DIGEST = "sha256:" + "5" * 64


def sample_references(generators: Sequence[str] = ("a", "b", "c", "d"), per: int = 4, n_layers: int = 6,
                      seed: int = 0) -> list[EnrolledCurve]:
    """Well-separated synthetic generators: a distinct curve shape each, plus small run-to-run noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n_layers)
    shapes = [4 * x - 1, 2 * np.sin(6 * x) + 1, 8 * (x - 0.5) ** 2 - 1, -3 * x + 0.5, 2 * np.cos(9 * x)]
    refs = []
    for shape, g in zip(shapes, generators):
        for i in range(per):
            values = shape + rng.normal(0, 0.05, n_layers)
            refs.append(EnrolledCurve(g, f"{g}{i}", Fingerprint.from_values(SAMPLE_DIGEST, values.tolist())))
    return refs


def _raises(kind: type[Exception], what: str, call: Callable[[], Any]) -> None:
    try:
        call()
    except kind:
        return
    except Exception as exc:  # noqa: BLE001 - the check names what was raised instead
        raise AssertionError(f"{what}: raised {type(exc).__name__}, not a {kind.__name__}") from exc
    raise AssertionError(f"{what}: accepted, should raise a {kind.__name__}")


def check_matcher_declared(factory: MatcherFactory) -> None:
    matcher = factory()
    assert isinstance(matcher, Matcher), f"the factory returned {type(matcher).__name__}, not a forensics Matcher"
    problems = contract_problems(type(matcher))
    assert not problems, "; ".join(problems)
    assert isinstance(matcher.min_generators, int) and matcher.min_generators >= 1, "min_generators must be ≥ 1"
    options = matcher.options()
    json.dumps(options, allow_nan=False)
    assert "open_set" in options, "options() must include the base class's (call super().options())"
    again = matcher.clone()
    assert type(again) is type(matcher) and again.options() == options and again.name == matcher.name, \
        "clone() (the matcher rebuilt from its options) differs"


def check_matcher_errors(factory: MatcherFactory, references: Sequence[EnrolledCurve] | None = None) -> None:
    refs = sample_references() if references is None else list(references)
    _raises(UsageError, "rank() before fit()", lambda: factory().rank(refs[0].fingerprint))
    _raises(UsageError, "fit([])", lambda: factory().fit([]))
    matcher = factory(open_set=False).fit(refs)
    n_layers = len(refs[0].fingerprint.values)
    _raises(UsageError, "a query of another length", lambda: matcher.rank(np.zeros(n_layers + 1)))
    other = Fingerprint.from_values("sha256:" + "6" * 64, [0.0] * n_layers)
    _raises(ProtocolMismatch, "a fingerprint of another protocol", lambda: matcher.rank(other))
    need = matcher.min_generators
    if need > 1:
        few = sorted({r.generator for r in refs})[:need - 1]
        _raises(UsageError, f"fit on {need - 1} generator(s)",
                lambda: factory(open_set=False).fit([r for r in refs if r.generator in few]))


def check_matcher_ranking(factory: MatcherFactory, references: Sequence[EnrolledCurve] | None = None) -> None:
    refs = sample_references() if references is None else list(references)
    matcher = factory(open_set=False).fit(refs)
    generators = sorted({r.generator for r in refs})
    for r in refs:
        ranked = matcher.rank(r.fingerprint)
        assert sorted(c.generator for c in ranked) == generators, "rank() must give one candidate per generator"
        assert all(isinstance(c, Candidate) and math.isfinite(c.score) for c in ranked), "scores must be finite"
        assert ranked == sorted(ranked, key=lambda c: (-c.score, c.generator)), "rank() is not best first"
        assert ranked[0].generator == r.generator, \
            f"an enrolled curve of {r.generator} ranks {ranked[0].generator} first (well-separated generators)"
        result = matcher.attribute(r.fingerprint)
        assert list(result.candidates) == ranked and result.verdict == r.generator


def check_matcher_determinism(factory: MatcherFactory, references: Sequence[EnrolledCurve] | None = None, *,
                              atol: float = 1e-9) -> None:
    """The same references give the same scores twice, exactly; in reverse order, the same rankings and
    scores within ``atol`` (an iterative solver may stop at a tolerance along an order-dependent path)."""
    refs = sample_references() if references is None else list(references)
    forward = factory(open_set=False).fit(refs)
    again = factory(open_set=False).fit(refs)
    backward = factory(open_set=False).fit(refs[::-1])
    for r in refs:
        a, b = forward.rank(r.fingerprint), backward.rank(r.fingerprint)
        assert a == again.rank(r.fingerprint), "two fits on the same references rank differently"
        assert a[0].generator == b[0].generator, "the order of the references changes the best candidate"
        by_generator = {c.generator: c.score for c in b}
        np.testing.assert_allclose([c.score for c in a], [by_generator[c.generator] for c in a], rtol=0, atol=atol,
                                   err_msg="the order of the references changes a score")


def check_matcher_calibration(factory: MatcherFactory, references: Sequence[EnrolledCurve] | None = None, *,
                              atol: float = 1e-9) -> None:
    refs = sample_references() if references is None else list(references)
    left_out = sorted({r.generator for r in refs})[-1]
    known = [r for r in refs if r.generator != left_out]
    matcher = factory()
    own, generic = astuple(matcher.calibration_points(known)), astuple(refit_points(matcher, known))
    for k, what in ((0, "answer"), (1, "unknown")):
        assert len(own[k]) == len(generic[k]), f"calibration_points() has {len(own[k])} {what} points, " \
                                               f"refitting gives {len(generic[k])}"
        np.testing.assert_allclose(sorted(own[k]), sorted(generic[k]), rtol=0, atol=atol,
                                   err_msg=f"calibration_points() differ from refitting ({what})")
    assert sorted(x[:2] for x in own[3]) == sorted(x[:2] for x in generic[3]), "left-out generators differ"
    fitted = matcher.fit(known)
    cal = fitted.calibration
    assert cal is not None and cal["calibrated"], f"not calibrated on well-separated generators: {cal}"
    json.dumps(fitted.describe(), allow_nan=False)
    for r in refs:
        verdict = fitted.attribute(r.fingerprint).verdict
        expected = None if r.generator == left_out else r.generator
        assert verdict == expected, f"{r.generator}/{r.instance}: verdict {verdict!r}, expected {expected!r}"
    recorded = factory(calibration=fitted.describe()["open_set"]).fit(known)
    assert recorded.calibration["source"] == "recorded", "a calibration recorded on the same references is not reused"
    assert {k: recorded.calibration[k] for k in ("score", "margin", "distance_ratio")} == \
        {k: cal[k] for k in ("score", "margin", "distance_ratio")}


MATCHER_CHECKS = (check_matcher_errors, check_matcher_ranking, check_matcher_determinism, check_matcher_calibration)


def check_matcher(factory: MatcherFactory, references: Sequence[EnrolledCurve] | None = None) -> None:
    """Run every matcher check; ``factory(**options)`` makes a fresh, unfitted matcher (a
    :class:`~forensics.match.Matcher` subclass, or e.g. ``lambda **o: make_matcher("alpha", **o)``).
    ``references`` must hold well-separated generators (default: :func:`sample_references`)."""
    check_matcher_declared(factory)
    for check in MATCHER_CHECKS:
        check(factory, references)


# -- diffusion models (InvMM) ------------------------------------------------------------------------
def check_diffusion_model(model: Any) -> None:
    """Every check of :class:`DiffusionModelContract` on one :class:`forensics.inversion.model.DiffusionModel`."""
    import torch

    from forensics.inversion.model import DiffusionModel, declared_problems

    assert isinstance(model, DiffusionModel), f"{type(model).__name__} is not a DiffusionModel"
    problems = declared_problems(model)
    assert not problems, "; ".join(problems)
    ab = model.alphas_cumprod
    assert torch.is_tensor(ab) and ab.dim() == 1 and ab.is_floating_point(), "alphas_cumprod: a 1-d float tensor"
    ab = ab.double().cpu()
    assert bool(((ab > 0) & (ab <= 1)).all()), "alphas_cumprod must lie in (0, 1]"
    assert bool((ab[1:] <= ab[:-1]).all()), "alphas_cumprod must not increase with t"
    T = model.num_timesteps
    for steps in (1, 5, 50):
        ts = list(model.ddim_timesteps(steps))
        assert 1 <= len(ts) <= steps, f"ddim_timesteps({steps}) gave {len(ts)} timesteps"
        assert all(0 <= int(t) < T for t in ts), f"ddim_timesteps({steps}) leaves 0 … {T - 1}"
        assert all(int(a) > int(b) for a, b in zip(ts, ts[1:])), f"ddim_timesteps({steps}) must descend"
    g = torch.Generator().manual_seed(0)
    images = (torch.rand((2, *model.image_shape), generator=g) * 2 - 1).to(model.device)
    with torch.no_grad():
        x0 = model.encode(images)
        assert tuple(x0.shape) == (2, *model.sample_shape), f"encode gave {tuple(x0.shape)}"
        back = model.decode(x0)
        assert tuple(back.shape) == (2, *model.image_shape), f"decode gave {tuple(back.shape)}"
    cond = None
    if model.soft_prompt is not None:
        sp = model.soft_prompt
        logits = torch.zeros((2, sp.length, sp.vocab_size), device=model.device, requires_grad=True)
        cond = model.condition(torch.softmax(logits, -1))
        null = model.null_condition(2)
        assert torch.is_tensor(cond) and torch.is_tensor(null) and cond.shape == null.shape, \
            "condition() and null_condition(n) must be batched alike"
    x_t = torch.randn((2, *model.sample_shape), generator=g).to(model.device)
    t = torch.tensor([0, T - 1], device=model.device)
    if cond is None:
        eps = model.predict_noise(x_t, t)
        assert eps.grad_fn is None, "predict_noise carries gradients from the model's parameters: freeze them"
    else:
        eps = model.predict_noise(x_t, t, cond)
        eps.float().sum().backward()
        assert logits.grad is not None and bool(logits.grad.abs().sum() > 0), "gradients must reach the soft prompt"
    assert tuple(eps.shape) == tuple(x_t.shape), f"predict_noise gave {tuple(eps.shape)} for {tuple(x_t.shape)}"
    assert bool(torch.isfinite(eps).all()), "predict_noise gave non-finite values"


try:
    import pytest
except ImportError:  # pragma: no cover - the class needs pytest, the functions do not
    pytest = None

if pytest is not None:

    class EncoderContract:
        """Inherit in a test module and provide an ``encoder`` fixture (class-scoped is cheapest);
        optionally override ``images`` (uint8, a few small images)."""

        @pytest.fixture(scope="class")
        @classmethod
        def images(cls) -> np.ndarray:
            return sample_images()

        def test_declared_layers(self, encoder, images):
            check_declared_layers(encoder, images)

        def test_layer_subsets(self, encoder, images):
            check_layer_subsets(encoder, images)

        def test_determinism(self, encoder, images):
            check_determinism(encoder, images)

        def test_batch_invariance(self, encoder, images):
            check_batch_invariance(encoder, images)

        def test_identity_and_preprocessing(self, encoder):
            check_identity(encoder)

        def test_unknown_layer_refused(self, encoder):
            check_unknown_layer(encoder)

    class StatisticContract:
        """Inherit in a test module and provide a ``statistic`` fixture; optionally override ``params``
        (a dict overriding the statistic's defaults) and ``embeddings`` ((train, test, generated))."""

        @pytest.fixture(scope="class")
        @classmethod
        def params(cls) -> dict[str, Any]:
            return {}

        @pytest.fixture(scope="class")
        @classmethod
        def embeddings(cls) -> Embeddings:
            return sample_embeddings()

        def test_declared(self, statistic, params):
            check_statistic_declared(statistic, params)

        def test_determinism(self, statistic, embeddings, params):
            check_statistic_determinism(statistic, embeddings, params)

        def test_generated_order_invariance(self, statistic, embeddings, params):
            check_statistic_order_invariance(statistic, embeddings, params)

        def test_round_trip_through_arrays(self, statistic, embeddings, params):
            check_statistic_round_trip(statistic, embeddings, params)

        def test_score_and_reading(self, statistic, embeddings, params):
            check_statistic_score(statistic, embeddings, params)

        def test_bad_shapes_raise(self, statistic, embeddings, params):
            check_statistic_errors(statistic, embeddings, params)

    class MatcherContract:
        """Inherit in a test module and provide a ``matcher_factory`` fixture (``factory(**options)`` makes
        a fresh matcher); optionally override ``references`` (well-separated generators) and
        ``reference_order_atol`` (how far a score may move with the order of the references)."""

        reference_order_atol = 1e-9

        @pytest.fixture(scope="class")
        @classmethod
        def references(cls) -> list[EnrolledCurve]:
            return sample_references()

        def test_declared(self, matcher_factory):
            check_matcher_declared(matcher_factory)

        def test_errors(self, matcher_factory, references):
            check_matcher_errors(matcher_factory, references)

        def test_ranking(self, matcher_factory, references):
            check_matcher_ranking(matcher_factory, references)

        def test_reference_order_invariance(self, matcher_factory, references):
            check_matcher_determinism(matcher_factory, references, atol=self.reference_order_atol)

        def test_calibration(self, matcher_factory, references):
            check_matcher_calibration(matcher_factory, references)

    class DiffusionModelContract:
        """Inherit in a test module and provide a ``model`` fixture (a frozen
        :class:`forensics.inversion.model.DiffusionModel`, class-scoped is cheapest)."""

        def test_diffusion_model(self, model):
            check_diffusion_model(model)
