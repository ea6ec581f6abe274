"""Who, when and with what: the provenance every report and registry entry records."""

from __future__ import annotations

import getpass
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata


def utc_now() -> str:
    """The time now in UTC, to the second, ISO 8601 with a ``Z``: ``2026-11-23T06:30:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def user() -> str:
    """The login name of whoever runs the tool, or ``"unknown"`` where the environment has none."""
    try:
        return getpass.getuser()
    except Exception:  # getpass raises several kinds where no user name is set
        return "unknown"


def tool_version() -> str:
    """``forensics <version>``, as registry entries record it."""
    from forensics import __version__

    return f"forensics {__version__}"


def tool_versions() -> dict[str, str]:
    """The versions that decide a report's numbers: forensics, Python and the numeric libraries present."""
    import numpy as np

    from forensics import __version__

    versions = {"forensics": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "timm", "sklearn", "scipy"):
        if name not in sys.modules and name in _DISTRIBUTIONS:
            # scikit-learn and SciPy are recorded but seldom used by a run: their installed version is read
            # without importing them (about 2 s of start-up on a 2-core machine)
            try:
                versions[name] = metadata.version(_DISTRIBUTIONS[name])
                continue
            except metadata.PackageNotFoundError:
                pass
        try:
            module = __import__(name)
        except ImportError:
            continue
        versions[name] = getattr(module, "__version__", "?")
    return versions


#: modules whose distribution's version equals their ``__version__`` (torch's carries a local tag, +cu…)
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "scipy": "scipy"}
