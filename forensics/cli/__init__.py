"""The ``forensics`` command line: each command parses its options, makes one library call and renders
the result (``commands`` holds the top-level commands, ``registry``, ``zoo`` and ``encoders`` the groups,
``common`` what they share)."""

from forensics.cli.commands import app, main

__all__ = ["app", "main"]
