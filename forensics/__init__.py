"""forensics: which generator made these images, and are they copies of training data?

The library API; the command line (``forensics …``) is a thin wrapper of these calls::

    import forensics

    demo = forensics.bundled_registry_path() / "mnist-effnet-lite0/samples/ddpm/heldout.npz"  # ships with it
    result = forensics.attribute(demo)
    result.verdict.generator         # the generator named, or None ("unknown", or .family named)
    result.curve                     # the C_T curve: per-layer values, readings, counted weights
    result.to_dict()                 # the JSON document of `forensics attribute --json`

    forensics.memorization(images).level          # where along the encoder's depth copying shows
    forensics.invmm(images, model="mnist-dup")    # how memorized each image is by a diffusion model
    forensics.enroll(images, "my-gan")            # fingerprint and store a generator's images
    forensics.evaluate(matchers=["alpha"])        # leave-one-out over the registry
    forensics.ct_score(train, test, generated)    # the statistic itself, on embeddings

``images`` is a folder of PNG/JPEG files, an .npz/.npy file, or a uint8 array (N, H, W[, C]).
Names are imported on first use, so that ``import forensics`` (and the command line) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from forensics.api import (
        attribute, calibrate, combine_protocols, create_protocol, curate, diff_registry, enroll, evaluate,
        import_paper, list_encoders, list_plugins, list_protocols, memorization, open_protocol, open_registry,
        remove, set_default_protocol, show_protocol, validate_registry, zoo_enroll, zoo_heldout, zoo_list,
        zoo_quality, list_cache, clear_cache, invmm, add_records, generator_family, refresh, remove_protocol,
        ship_scoring_sides,
    )
    from forensics.encode.encoder import Encoder
    from forensics.engine import Curve, LayerValue
    from forensics.errors import (
        ForensicsError, PluginError, ProtocolMismatch, RegistryError, StatisticError, UsageError, WeightsError,
    )
    from forensics.hookspecs import hookimpl
    from forensics.match import Attribution, Candidate, EnrolledCurve
    from forensics.protocol import Combination, Fingerprint, Protocol
    from forensics.extras import MissingExtra
    from forensics.registry import Registry, bundled_registry_path
    from forensics.results import (
        AttributionResult, BatchAttribution, CalibrationResult, CombinationResult, CurationResult, EncoderListing,
        EnrolmentResult, EvaluationResult, HeldoutResult, ImageInput, MemorizationResult, PaperImport,
        PluginListing, ProtocolCreation, ProtocolDetail, ProtocolSummary, RegistryDiff, RegistryListing,
        RemovalResult, ValidationResult, Verdict, ZooEnrolment, ZooListing, ZooQuality, CacheItem, CacheListing,
        CacheClearing, InvMMResult, FamilyResult, RefreshResult, ProtocolRemoval,
    )
    from forensics.stats.ct import CellResult, CTResult, FittedCT, ct_score

_LAZY: dict[str, str] = {
    # jobs
    **dict.fromkeys(("open_registry", "open_protocol", "attribute", "memorization", "enroll", "remove", "evaluate",
                     "calibrate", "create_protocol", "combine_protocols", "curate", "list_protocols",
                     "show_protocol", "validate_registry", "diff_registry", "import_paper", "set_default_protocol",
                     "list_plugins", "list_encoders", "zoo_list", "zoo_heldout", "zoo_enroll", "zoo_quality",
                     "list_cache", "clear_cache", "invmm", "add_records", "generator_family", "refresh",
                     "remove_protocol", "ship_scoring_sides"),
                    "forensics.api"),
    # what they return
    **dict.fromkeys(("AttributionResult", "BatchAttribution", "Verdict", "ImageInput", "MemorizationResult",
                     "EnrolmentResult", "RemovalResult", "EvaluationResult", "CalibrationResult",
                     "ProtocolCreation", "CombinationResult", "CurationResult", "RegistryListing",
                     "ProtocolSummary", "ProtocolDetail", "ValidationResult", "RegistryDiff", "PaperImport",
                     "PluginListing", "EncoderListing", "HeldoutResult", "ZooListing", "ZooEnrolment",
                     "ZooQuality", "CacheItem", "CacheListing", "CacheClearing", "InvMMResult", "FamilyResult", "RefreshResult",
                     "ProtocolRemoval"),
                    "forensics.results"),
    # the pieces they are made of
    **dict.fromkeys(("Curve", "LayerValue"), "forensics.engine"),
    **dict.fromkeys(("Attribution", "Candidate", "EnrolledCurve"), "forensics.match"),
    **dict.fromkeys(("Registry", "bundled_registry_path"), "forensics.registry"),
    **dict.fromkeys(("Protocol", "Combination", "Fingerprint"), "forensics.protocol"),
    "Encoder": "forensics.encode.encoder",
    **dict.fromkeys(("ct_score", "FittedCT", "CTResult", "CellResult"), "forensics.stats.ct"),
    # errors
    **dict.fromkeys(("ForensicsError", "UsageError", "RegistryError", "ProtocolMismatch", "WeightsError",
                     "PluginError", "StatisticError"), "forensics.errors"),
    "MissingExtra": "forensics.extras",
    # plugins
    "hookimpl": "forensics.hookspecs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'forensics' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The API (``__all__``) and the module's own dunders, not the names its code imports (``Any``, ``importlib``)."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})
