"""Hook specifications: the points where plugins extend ``forensics``.

A plugin is a module (or any object) with functions named like the hooks below, marked with
:data:`forensics.hookimpl`, made known through the entry-point group ``forensics``::

    # pyproject.toml of a third-party package
    [project.entry-points.forensics]
    my_encoders = "my_package.forensics_plugin"

Every hook receives one argument, ``register``: a callback that the host owns. Plugins call it once
per thing they provide; the host checks the name, records which plugin gave it and refuses a name that
two plugins claim (the error names both). Hooks return nothing. The host calls hooks with keyword
arguments only, so a later version may pass more arguments without breaking existing plugins.

A plugin whose import fails, or whose hook raises, is reported by ``forensics plugins`` with its name
and the cause; everything else goes on working.
"""

from __future__ import annotations

import pluggy

PROJECT = "forensics"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def forensics_encoders(register):
    """Provide encoders: models that turn images into one embedding per layer.

    :param register: ``register(name, factory, *, description="")``.
        ``name`` is the encoder's public name (lower case, ``[a-z0-9_.-]``, e.g. ``vit_base_patch16_224``).
        ``factory(*, weights=None, device="cpu", **options)`` returns a :class:`forensics.encode.encoder.Encoder`.
        ``weights`` is ``None`` (find the weights the usual way: local file, pip package, cache), a path
        to a weights file, or ``"random"`` (random initialisation, only when asked for by name). The
        factory raises :class:`forensics.errors.WeightsError` with a how-to when weights are missing.

    Example::

        @hookimpl
        def forensics_encoders(register):
            register("tiny_cnn", make_tiny_cnn, description="A 3-stage CNN for tests")
    """


@hookspec
def forensics_statistics(register):
    """Provide statistics: functions of (training, test, generated) embeddings of one layer.

    :param register: ``register(name, statistic, *, description="")``. ``statistic`` is an object with
        ``fit(train, test, **params)`` returning a reference object whose ``score(generated, **params)``
        returns a result with a float ``.value`` (see :class:`forensics.stats.base.Statistic`).

    Example::

        @hookimpl
        def forensics_statistics(register):
            register("ct", CTStatistic(), description="Meehan et al. 2020 data-copying statistic")
    """


@hookspec
def forensics_matchers(register):
    """Provide matchers: ways of ranking reference fingerprints against a query curve.

    :param register: ``register(name, factory, *, description="")``. ``factory(**options)`` returns a
        :class:`forensics.match.matcher.Matcher`: ``fit(references)``, then ``rank(curve)`` (candidates, best
        first) and ``attribute(curve)`` (candidates plus a verdict, ``None`` meaning "unknown").

    Example::

        @hookimpl
        def forensics_matchers(register):
            register("cosine", lambda **o: SimilarityMatcher(alpha=1.0, **o), description="1-NN, cosine")
    """


@hookspec
def forensics_datasets(register):
    """Provide reference data sets: the training set T and held-out set P_n of a protocol.

    :param register: ``register(name, loader, *, description="")``. ``loader(split, **options)`` returns a
        uint8 array of images, shape (N, H, W) or (N, H, W, C), for ``split`` in ``("train", "test")``,
        and raises :class:`forensics.errors.ForensicsError` saying how to obtain the data when it is
        not on this machine.

    Example::

        @hookimpl
        def forensics_datasets(register):
            register("digits", load_digits_split, description="scikit-learn's 8x8 digits")
    """
