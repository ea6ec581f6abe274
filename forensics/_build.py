"""Build step (setuptools, through ``[tool.setuptools.cmdclass]`` in pyproject.toml): the wheel carries the
bundled registry as package data.

The registry stays at the top of the source tree (``registry/``, where git reviews it) and is copied into
the wheel as ``forensics/_registry``, where :func:`forensics.registry.bundled_registry_path` finds it in an
installed package. Inside the package rather than as a data package of its own (``forensics_registry``)
or a download: the fingerprints, the shipped reference sides and the demo sets belong to the code version
that computed them (a digest mismatch between the two is refused), every file of them is read by the default
protocol, the demo or the zoo (most of it the enrolled runs' per-image records under every condition: sizes
in docs/install.md), and one install and one uninstall cover both.
Nothing writes there: commands write to the user registry (see :mod:`forensics.registry.store`).

The sdist carries ``registry/`` too, so that a wheel built from it has the same contents. Editable
installs copy nothing: a checkout reads its own ``registry/``. This module is used at build time only
and is left out of the wheel.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

SOURCE = "registry"  # the folder at the top of the source tree
TARGET = ("forensics", "_registry")  # where it lies in the wheel


def registry_files(root: str | Path) -> list[Path]:
    """The files of ``root/registry`` a user needs, relative to ``root``: all but hidden files (the write
    lock, interrupted temporary files, .gitignore) and caches."""
    base = Path(root) / SOURCE
    found = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if not name.startswith(".") and not name.endswith((".tmp", ".pyc")):
                found.append(Path(folder, name).relative_to(root))
    return found


class build_py(_build_py):  # noqa: N801 (setuptools' command names)
    """setuptools' build_py, then the registry copied to ``forensics/_registry`` in the build folder."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) != ("forensics", "_build")]  # build time only

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source_root = Path(self.distribution.src_root or os.curdir)
        if not (source_root / SOURCE).is_dir():
            raise RuntimeError(f"{source_root / SOURCE} is missing: the wheel would have no registry")
        target = Path(self.build_lib).joinpath(*TARGET)
        if target.exists():  # a file removed from registry/ must not survive from an earlier build
            shutil.rmtree(target)
        for rel in registry_files(source_root):
            out = target.joinpath(*rel.parts[1:])
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_root / rel, out)


class sdist(_sdist):  # noqa: N801
    """setuptools' sdist, with ``registry/``."""

    def add_defaults(self) -> None:
        super().add_defaults()
        self.filelist.extend(str(p) for p in registry_files(self.distribution.src_root or os.curdir))
