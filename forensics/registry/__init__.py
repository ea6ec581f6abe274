"""The fingerprint registry: YAML files of protocols and enrolled curves, validated, written atomically.

Import from this package (``from forensics.registry import Registry``): the names below are its public
surface, whichever module inside defines them."""

from forensics.registry.store import SCHEMA_VERSION, Registry, default_registry_path, diff

__all__ = ["SCHEMA_VERSION", "Registry", "default_registry_path", "diff"]
