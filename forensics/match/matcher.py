"""The names of :mod:`forensics.match` under the module path ``forensics.match.matcher``, for code that
imports them from there; new code imports from :mod:`forensics.match`."""

from forensics.match import *  # noqa: F401,F403
from forensics.match import __all__  # noqa: F401
