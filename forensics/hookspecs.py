"""Hook specifications: the points where plugins extend ``forensics``.

A plugin is a module (or any object) with functions named like the hooks below, marked with
:data:`forensics.hookimpl`, made known through the entry-point group ``forensics``::

    # pyproject.toml of a third-party package
    [project.entry-points.forensics]
    my_encoders = "my_package.forensics_plugin"

Every hook receives one argument, ``register``: a callback that the host owns. Plugins call it once
per thing they provide; the host checks the name, checks that the thing meets its contract (the types
below), records which plugin gave it and withholds a name that two plugins claim (asking for it is an error
naming both). Hooks return nothing. The host calls hooks with keyword arguments only, so a later version may
pass more arguments without breaking existing plugins.

A plugin whose import fails, whose hook raises, or that registers something that does not meet its
contract is reported by ``forensics plugins`` with its name and the cause; everything else goes on
working. ``forensics.testing`` holds the contract suites a plugin's own tests can run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    import numpy as np

    from forensics.encode.encoder import Encoder, EncoderSpec
    from forensics.inversion.model import CopySimilarity, DiffusionModel
    from forensics.match import Matcher
    from forensics.stats.base import Statistic

PROJECT = "forensics"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class EncoderFactory(Protocol):
    """Builds an encoder. ``weights``: ``None`` (find the weights the usual way: local file, pip package,
    cache), a path to a weights file, or ``"random"`` (random initialisation, only when asked for by
    name); it raises :class:`forensics.errors.WeightsError` with a how-to when weights are missing.
    ``options`` are JSON-able and recorded in a protocol. A factory may also carry
    ``describe(**options)`` returning a :class:`forensics.encode.encoder.EncoderSpec`, so that listings
    need not build the model."""

    def __call__(self, *, weights: str | None = None, device: str = "cpu", **options: Any) -> Encoder: ...


@runtime_checkable
class DescribingFactory(EncoderFactory, Protocol):
    """An :class:`EncoderFactory` that also carries the optional ``describe``: what its encoder declares
    (:class:`forensics.encode.encoder.EncoderSpec`), without building the model."""

    def describe(self, **options: Any) -> EncoderSpec: ...


class MatcherFactory(Protocol):
    """Builds an unfitted :class:`forensics.match.Matcher` from its options (keyword arguments); a
    :class:`~forensics.match.Matcher` subclass is one."""

    def __call__(self, **options: Any) -> Matcher: ...


class DatasetLoader(Protocol):
    """Loads one split (``"train"`` = T or ``"test"`` = P_n) of a reference data set as a uint8 array,
    shape (N, H, W) or (N, H, W, C); raises :class:`forensics.errors.ForensicsError` saying how to
    obtain the data when it is not on this machine."""

    def __call__(self, split: str, **options: Any) -> np.ndarray: ...


class DiffusionModelLoader(Protocol):
    """Loads a frozen :class:`forensics.inversion.model.DiffusionModel` for InvMM. Called with ``path=None`` for
    the model the name stands for (the bundled ``mnist-dup``), or with the ``path`` the user gave when the
    loader's optional ``accepts(path) -> bool`` says it can open it (a diffusers folder, a weights file).
    Raises :class:`forensics.errors.UsageError` saying what is missing (weights, an optional extra)."""

    def __call__(self, *, path: str | None = None, device: str = "cpu", **options: Any) -> DiffusionModel: ...


class SimilarityFactory(Protocol):
    """Builds a :class:`forensics.inversion.model.CopySimilarity`; ``threshold`` None takes its own β."""

    def __call__(self, *, threshold: float | None = None, **options: Any) -> CopySimilarity: ...


class RegisterEncoder(Protocol):
    def __call__(self, name: str, factory: EncoderFactory, *, description: str = "") -> None: ...


class RegisterStatistic(Protocol):
    def __call__(self, name: str, statistic: Statistic, *, description: str = "") -> None: ...


class RegisterMatcher(Protocol):
    def __call__(self, name: str, factory: MatcherFactory, *, description: str = "") -> None: ...


class RegisterDataset(Protocol):
    def __call__(self, name: str, loader: DatasetLoader, *, description: str = "") -> None: ...


class RegisterDiffusionModel(Protocol):
    def __call__(self, name: str, loader: DiffusionModelLoader, *, description: str = "") -> None: ...


class RegisterSimilarity(Protocol):
    def __call__(self, name: str, factory: SimilarityFactory, *, description: str = "") -> None: ...


@hookspec
def forensics_encoders(register: RegisterEncoder) -> None:
    """Provide encoders: models that turn images into one embedding per layer.

    :param register: ``register(name, factory, *, description="")`` (:class:`RegisterEncoder`).
        ``name`` is the encoder's public name (lower case, ``[a-z0-9_.-]``, e.g. ``vit_base_patch16_224``);
        ``factory`` is an :class:`EncoderFactory`: ``factory(*, weights=None, device="cpu", **options)``
        returns a :class:`forensics.encode.encoder.Encoder`. The host checks that ``factory`` is callable.
    :returns: nothing; every call of ``register`` is collected.

    Example::

        @hookimpl
        def forensics_encoders(register):
            register("tiny_cnn", make_tiny_cnn, description="A 3-stage CNN for tests")

    Check an encoder with :class:`forensics.testing.EncoderContract`.
    """


@hookspec
def forensics_statistics(register: RegisterStatistic) -> None:
    """Provide statistics: functions of (training, test, generated) embeddings of one layer.

    :param register: ``register(name, statistic, *, description="")`` (:class:`RegisterStatistic`).
        ``statistic`` is an object that meets :class:`forensics.stats.base.Statistic`: ``fit(train, test,
        **params)`` returns a :class:`~forensics.stats.base.FittedStatistic` whose ``score(generated,
        **params)`` returns a :class:`~forensics.stats.base.Score` (``value``, ``counted_weight``);
        ``fit_params``, ``score_params``, ``defaults``, ``devices``, ``reading(value)`` and
        ``reading_thresholds`` say how it is parametrised, where it computes and what a value means; an
        optional ``batch_params(score_params, m)`` resolves score parameters that depend on the protocol's
        batch size m, an optional ``combine(values, counts, n_test)`` the value of a set scored in parts under
        several conditions, and an optional ``layer_dim`` the one embedding size it scores (checked when a
        protocol is defined). The host checks these attributes when the statistic is registered.
    :returns: nothing; every call of ``register`` is collected.

    Example::

        @hookimpl
        def forensics_statistics(register):
            register("ct", CTStatistic(), description="Meehan et al. 2020 data-copying statistic")

    Check a statistic with :class:`forensics.testing.StatisticContract`.
    """


@hookspec
def forensics_matchers(register: RegisterMatcher) -> None:
    """Provide matchers: ways of ranking enrolled curves against a query curve.

    :param register: ``register(name, factory, *, description="")`` (:class:`RegisterMatcher`).
        ``factory(**options)`` (a :class:`MatcherFactory`) returns a :class:`forensics.match.Matcher`:
        ``fit(references)``, then ``rank(curve)`` (candidates, best first) and ``attribute(curve)``
        (candidates plus a verdict, ``None`` meaning "unknown"). A subclass of
        :class:`~forensics.match.Matcher` implements ``fit_curves`` and ``candidates``; the open-set
        calibration, evaluation and reports come with the base class. The host checks that ``factory``
        is callable (and, for a class, a concrete :class:`~forensics.match.Matcher`).
    :returns: nothing; every call of ``register`` is collected.

    Example::

        @hookimpl
        def forensics_matchers(register):
            register("cosine", lambda **o: SimilarityMatcher(alpha=1.0, **o), description="1-NN, cosine")

    Check a matcher with :class:`forensics.testing.MatcherContract`.
    """


@hookspec
def forensics_datasets(register: RegisterDataset) -> None:
    """Provide reference data sets: the training set T and held-out set P_n of a protocol.

    :param register: ``register(name, loader, *, description="")`` (:class:`RegisterDataset`).
        ``loader(split, **options)`` (a :class:`DatasetLoader`) returns a uint8 array of images, shape
        (N, H, W) or (N, H, W, C), for ``split`` in ``("train", "test")``, and raises
        :class:`forensics.errors.ForensicsError` saying how to obtain the data when it is not on this
        machine. The host checks that ``loader`` is callable.
    :returns: nothing; every call of ``register`` is collected.

    Example::

        @hookimpl
        def forensics_datasets(register):
            register("digits", load_digits_split, description="scikit-learn's 8x8 digits")
    """


@hookspec
def forensics_diffusion_models(register: RegisterDiffusionModel) -> None:
    """Provide diffusion models for InvMM (``forensics invmm --model NAME|PATH``).

    :param register: ``register(name, loader, *, description="")`` (:class:`RegisterDiffusionModel`).
        ``loader(*, path=None, device="cpu", **options)`` (a :class:`DiffusionModelLoader`) returns a
        :class:`forensics.inversion.model.DiffusionModel`: a frozen noise predictor with its ᾱ_t, DDIM
        timesteps, and, for latent or text-conditioned models, ``encode``/``decode`` and a soft prompt.
        A loader that can open files the user names carries ``accepts(path) -> bool``; ``--model PATH``
        goes to the first loader (by name) that accepts it. The host checks that ``loader`` is callable.
    :returns: nothing; every call of ``register`` is collected.

    Example::

        @hookimpl
        def forensics_diffusion_models(register):
            register("my-ddpm", load_my_ddpm, description="my DDPM on CIFAR-10")

    Check a model with :class:`forensics.testing.DiffusionModelContract`.
    """


@hookspec
def forensics_copy_similarities(register: RegisterSimilarity) -> None:
    """Provide copy similarities: how InvMM's verification judges that a sample is the target image.

    :param register: ``register(name, factory, *, description="")`` (:class:`RegisterSimilarity`).
        ``factory(*, threshold=None, **options)`` returns a :class:`forensics.inversion.model.CopySimilarity`:
        ``similarity(samples, target)`` → one score per sample (images in [0, 1] at the model's
        resolution) and its ``threshold`` β. The host checks that ``factory`` is callable.
    :returns: nothing; every call of ``register`` is collected.

    Example::

        @hookimpl
        def forensics_copy_similarities(register):
            register("ssim", lambda *, threshold=None: SSIMSimilarity(threshold or 0.9), description="SSIM")
    """
