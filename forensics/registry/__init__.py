"""The fingerprint registry: YAML files of protocols and enrolled curves, validated, written atomically.

Import from this package (``from forensics.registry import Registry``): the names below are its public
surface, whichever module inside defines them. Inside: :mod:`~forensics.registry.model` (the records),
:mod:`~forensics.registry.schema` (reading, checking and writing the files),
:mod:`~forensics.registry.store` (:class:`Registry`: open, read, enrol, remove, calibrate; where the
registry is: the user registry over the bundled one),
:mod:`~forensics.registry.diff` (two states compared, git revisions) and
:mod:`~forensics.registry.papercurves` (the paper's published curves as a protocol)."""

from forensics.registry.diff import diff, git_snapshot, open_state
from forensics.registry.model import SCHEMA_VERSION, GeneratorEntry, Instance
from forensics.registry.store import (
    Registry, bundled_registry_path, default_registry_path, registry_layers, user_registry_path,
)

__all__ = ["SCHEMA_VERSION", "GeneratorEntry", "Instance", "Registry", "bundled_registry_path",
           "default_registry_path", "diff", "git_snapshot", "open_state", "registry_layers", "user_registry_path"]
