"""Errors that reach the user as one line.

Every error the program expects (bad input, missing weights, a protocol mismatch, a damaged registry)
is a :class:`ForensicsError`: the command line prints its message alone, on one line, and exits with
its ``exit_code``. Anything else is a bug and shows a traceback under ``--debug``.
"""

from __future__ import annotations


class ForensicsError(Exception):
    """An expected failure of a run: the message says what went wrong and what to do."""

    exit_code = 1


class UsageError(ForensicsError):
    """The user asked for something that cannot be (an unknown name, a bad option value)."""

    exit_code = 2


class StatisticError(ForensicsError):
    """A statistic cannot be computed on the data given (no counted cell, an empty cell, bad shapes)."""


class PluginError(ForensicsError):
    """A plugin is broken or missing (a protocol's encoder or data set no installed plugin provides), or two
    plugins claim the same name."""


class RegistryError(ForensicsError):
    """A registry file is missing, malformed or inconsistent."""


class WeightsError(ForensicsError):
    """Weights for an encoder cannot be found or do not fit it."""


class ProtocolMismatch(ForensicsError):
    """Two things computed under different protocols were about to be compared."""
