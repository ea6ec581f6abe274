"""JSON Schemas (draft 2020-12) of the documents the command line prints with ``--json``.

Each document names its schema in its ``schema`` field (``forensics.attribution/1``); the file of that
schema ships here as ``<name>-<version>.schema.json`` (``attribution-1.schema.json``). A schema is strict:
every field is required and typed, and a closed object admits no other field, so a renamed or missing
field fails validation; the objects that plugins fill (a matcher's record, options, provenance) stay open.
Fields are only ever added within a version, each with its schema updated in the same change.

    >>> from forensics import schemas
    >>> schemas.validate(forensics.attribute("batch.npz").to_dict())   # needs the jsonschema package
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from forensics.errors import UsageError

PREFIX = "forensics."


def file_name(schema_id: str) -> str:
    """The file that holds a schema: ``forensics.zoo-list/1`` → ``zoo-list-1.schema.json``."""
    if not isinstance(schema_id, str) or not schema_id.startswith(PREFIX) or "/" not in schema_id:
        raise UsageError(f"not a forensics schema id: {schema_id!r} (expected forensics.<name>/<version>)")
    name, version = schema_id[len(PREFIX):].split("/", 1)
    return f"{name}-{version}.schema.json"


def known() -> list[str]:
    """Every schema id that ships, sorted."""
    ids = []
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".schema.json"):
            ids.append(json.loads(entry.read_text(encoding="utf-8"))["title"])
    return sorted(ids)


def load(schema_id: str) -> dict[str, Any]:
    """The schema of ``schema_id`` as a dict; a one-line error when none ships."""
    entry = resources.files(__name__) / file_name(schema_id)
    if not entry.is_file():
        raise UsageError(f"no schema {schema_id!r} ships with forensics; known: {', '.join(known())}")
    return json.loads(entry.read_text(encoding="utf-8"))


def validate(doc: Any) -> None:
    """Check a document against the schema its ``schema`` field names; raises
    :class:`jsonschema.ValidationError` (the most telling error, with its path) when it does not conform."""
    try:
        import jsonschema
    except ImportError:
        raise UsageError("validating needs the jsonschema package: pip install jsonschema") from None
    if not isinstance(doc, dict) or "schema" not in doc:
        raise UsageError("not a forensics document: it has no 'schema' field")
    validator = jsonschema.Draft202012Validator(load(doc["schema"]), format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))  # the deepest, most telling one
    if error is not None:
        raise error
