"""Plugin collection: entry points in, named providers out, failures reported instead of raised.

The host owns everything here: which plugins load, what each provides, and what happens when one
breaks. Third-party plugins and the bundled ones (``plugins/`` in the source tree) come in the same way,
through the entry-point group ``forensics``.

Environment switches (read when a :class:`PluginHost` is built):

``FORENSICS_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the plugins bundled with ``forensics`` itself, none installed by other packages
    (what the test suite does, so that a user's plugins never change its results).
``FORENSICS_DISABLE_PLUGINS=name,name``
    skip these entry points by name. The bundled plugins the tool cannot work without
    (:data:`ESSENTIAL`) stay loaded, with a one-line notice.

Everything a plugin registers is checked against its contract when it is registered (a statistic's
attributes, a matcher factory's class, callables): a plugin that breaks it is reported, not loaded half.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from forensics import hookspecs
from forensics.errors import PluginError, UsageError

GROUP = "forensics"
#: the distribution that ships the ``forensics`` package and the bundled plugins
DISTRIBUTION = "forensics-attribution"
KINDS = ("encoders", "statistics", "matchers", "datasets", "diffusion_models", "copy_similarities")
SINGULAR = {"encoders": "encoder", "statistics": "statistic", "matchers": "matcher", "datasets": "dataset",
            "diffusion_models": "diffusion model", "copy_similarities": "copy similarity"}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_.-")

ESSENTIAL = {
    "ct": "the statistic of every bundled protocol",
    "matchers": "every matcher",
    "datasets": "the reference data sets of the bundled protocols",
    "timm": "the encoders of the default protocol",
}
"""Bundled plugins that cannot be disabled, and why: without them the tool cannot attribute anything."""

log = logging.getLogger(__name__)


def _callable(what: str) -> Callable[[Any], list[str]]:
    def check(obj: Any) -> list[str]:
        return [] if callable(obj) else [f"the {what} must be callable, got {type(obj).__name__}"]

    return check


def _statistic_problems(obj: Any) -> list[str]:
    from forensics.stats.base import contract_problems

    return contract_problems(obj)


def _matcher_problems(obj: Any) -> list[str]:
    from forensics.match import contract_problems

    return contract_problems(obj)


CONTRACTS: dict[str, Callable[[Any], list[str]]] = {
    "encoders": _callable("encoder factory"),
    "statistics": _statistic_problems,
    "matchers": _matcher_problems,
    "datasets": _callable("data set loader"),
    "diffusion_models": _callable("diffusion model loader"),
    "copy_similarities": _callable("copy similarity factory"),
}
"""For each kind, what the host checks of a registered object: a list of problems, empty when it meets
its contract (:mod:`forensics.hookspecs`)."""


@dataclass(frozen=True)
class Provided:
    """One thing a plugin registered: an encoder, a statistic, a matcher, a data set, a diffusion model
    or a copy similarity."""

    kind: str
    name: str
    obj: Any
    plugin: str
    description: str = ""


@dataclass
class PluginInfo:
    """What the host knows of one plugin: where it came from and what it gave or why it failed."""

    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    bundled: bool = False
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)
    #: by kind, the names its hook tried to register when it failed (the last is the one refused), and why
    refused: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "bundled": self.bundled,
            "ok": self.error is None,
            "error": self.error,
            "provides": {kind: sorted(names) for kind, names in self.provides.items() if names},
        }


_redirect = {"lock": threading.Lock(), "depth": 0, "saved": None}


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """What a plugin prints while it is imported, registers, builds or encodes (a banner, a progress line) goes
    to stderr: stdout carries the commands' data (``--json``), which a line there would break. Safe across
    threads (the library called from a thread pool): the first to enter swaps ``sys.stdout``, the last to
    leave puts it back, where nested ``redirect_stdout`` calls leaving out of order would leave it on stderr."""
    with _redirect["lock"]:
        if _redirect["depth"] == 0:
            _redirect["saved"], sys.stdout = sys.stdout, sys.stderr
        _redirect["depth"] += 1
    try:
        yield
    finally:
        with _redirect["lock"]:
            _redirect["depth"] -= 1
            if _redirect["depth"] == 0:
                sys.stdout, _redirect["saved"] = _redirect["saved"], None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pluggy.PluginValidationError):  # its first line names the hook, the rest says what is wrong
        return f"{type(exc).__name__}: " + "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _ships_forensics(dist: metadata.Distribution) -> bool:
    """Whether ``dist`` is the distribution of forensics itself (its plugins are the bundled ones): by name,
    or, for an install made before the distribution was renamed, by the ``forensics`` package it ships."""
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    return name == DISTRIBUTION or "forensics" in (dist.read_text("top_level.txt") or "").split()


class PluginHost:
    """Loads plugins once and collects what they provide, kind by kind, on first use."""

    def __init__(self, *, autoload: bool | None = None, disabled: Iterable[str] | None = None,
                 entry_points: bool = True):
        if autoload is None:  # set to anything but a no (0, false, no, off, empty): the bundled plugins only
            autoload = os.environ.get("FORENSICS_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in (
                "", "0", "false", "no", "off")
        if disabled is None:
            disabled = [n.strip() for n in os.environ.get("FORENSICS_DISABLE_PLUGINS", "").split(",") if n.strip()]
        self.autoload = autoload
        self.disabled = set(disabled)
        self.notices: list[str] = []
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self._collected: dict[str, dict[str, Provided]] = {}
        self._conflicts: dict[tuple[str, str], str] = {}  # (kind, name) two plugins claim → the error saying so
        if entry_points:
            self._load_entry_points()
            unknown = sorted(self.disabled - {name.split(" (")[0] for name in self.info}
                             - {ep.name for ep in metadata.entry_points(group=GROUP)}) if self.disabled else []
            if unknown:
                self._notice(f"FORENSICS_DISABLE_PLUGINS names no plugin {', '.join(map(repr, unknown))}; "
                             "`forensics plugins` lists their names")

    # -- loading ---------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        def ships(ep: Any) -> bool:
            return ep.dist is not None and _ships_forensics(ep.dist)

        # the bundled plugins first: a name they use is theirs, and another package's entry point of that name
        # is the one reported (else a package earlier on the path would displace, say, the default's encoders)
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: (not ships(e), e.name)):
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            bundled = ships(ep)
            if not self.autoload and not bundled:
                continue
            if ep.name in self.disabled:
                if not (bundled and ep.name in ESSENTIAL):
                    continue
                self._notice(f"plugin {ep.name!r} stays enabled: it is bundled and essential "
                             f"({ESSENTIAL[ep.name]}); FORENSICS_DISABLE_PLUGINS cannot disable it")
            info = PluginInfo(name=ep.name, distribution=dist_name,
                              version=dist.version if dist is not None else None,
                              module=ep.value, bundled=bundled)
            if ep.name in self.info:
                other = self.info[ep.name]
                info.error = (f"entry point name {ep.name!r} is also used by {other.distribution or '?'}"
                              + ("'s bundled plugin, which keeps it; rename this one" if other.bundled
                                 else "; rename one of them"))
                self.info[f"{ep.name} ({dist_name})"] = info
                continue
            self.info[ep.name] = info
            try:
                with stdout_to_stderr():
                    plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
                self._validate(ep.name, plugin)
            except (Exception, SystemExit) as exc:  # a broken plugin is reported, never fatal (sys.exit too)
                if self.pm.get_plugin(ep.name) is not None:
                    self.pm.unregister(name=ep.name)
                info.error = _describe(exc)

    def _notice(self, message: str) -> None:
        self.notices.append(message)
        log.warning(message)

    def _validate(self, name: str, plugin: Any) -> None:
        """Catch misspelt hooks (``forensics_encoder`` for ``forensics_encoders``), as pluggy's check_pending does."""
        known = {f"forensics_{kind}" for kind in KINDS}
        for attr in dir(plugin):
            if attr.startswith("forensics_") and attr not in known and callable(getattr(plugin, attr, None)):
                raise PluginError(f"unknown hook {attr!r}; known hooks: {', '.join(sorted(known))}")
            if attr in known and callable(getattr(plugin, attr, None)) and not hasattr(
                    getattr(plugin, attr), f"{hookspecs.PROJECT}_impl"):  # pluggy would skip it without a word
                raise PluginError(f"{attr} is not marked as a hook: decorate it with @forensics.hookimpl "
                                  "(from forensics import hookimpl)")

    def add(self, plugin: Any, name: str, *, version: str | None = None) -> None:
        """Register a plugin object directly (tests, embedding applications)."""
        if name in self.info:
            raise PluginError(f"a plugin named {name!r} is already registered")
        info = PluginInfo(name=name, version=version, module=getattr(plugin, "__name__", type(plugin).__name__))
        self.info[name] = info
        try:
            self.pm.register(plugin, name=name)
            self._validate(name, plugin)
        except Exception as exc:
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            info.error = _describe(exc)
        self._collected.clear()
        self._conflicts.clear()

    def remove(self, name: str) -> None:
        """Unregister a plugin added with :meth:`add` (or any non-essential one); the essential bundled
        plugins (:data:`ESSENTIAL`) are refused with a :class:`PluginError`."""
        info = self.info.get(name)
        if info is not None and info.bundled and name in ESSENTIAL:
            raise PluginError(f"plugin {name!r} is bundled and essential ({ESSENTIAL[name]}); it cannot be removed")
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.info.pop(name, None)
        self._collected.clear()
        self._conflicts.clear()

    # -- collecting ------------------------------------------------------------------------------
    def collect(self, kind: str) -> dict[str, Provided]:
        """Everything of one kind, by name. A name two plugins claim (neither bundled) is left out, both plugins
        reported: asking for it (:meth:`get`) is a :class:`PluginError` naming both, everything else works."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if kind in self._collected:
            return self._collected[kind]
        found: dict[str, Provided] = {}
        claimants: dict[str, list[str]] = {}  # a name two or more plugins claim: by whom
        hook = getattr(self.pm.hook, f"forensics_{kind}")
        for impl in reversed(hook.get_hookimpls()):  # registration order
            plugin_name = impl.plugin_name
            info = self.info.setdefault(plugin_name, PluginInfo(name=plugin_name))
            mine: list[Provided] = []
            tried: list[str] = []

            def register(name: str, obj: Any, *, description: str = "", _plugin=plugin_name, _mine=mine,
                         _tried=tried) -> None:
                _tried.append(str(name))
                if not isinstance(name, str) or not name or set(name) - _NAME_CHARS:
                    raise PluginError(f"{SINGULAR[kind]} name {name!r} must be lower case letters, digits, '_', '.', '-'")
                if any(p.name == name for p in _mine):
                    raise PluginError(f"{SINGULAR[kind]} {name!r} registered twice")
                problems = CONTRACTS[kind](obj)
                if problems:
                    raise PluginError(f"{SINGULAR[kind]} {name!r} does not meet its contract: {'; '.join(problems)}")
                _mine.append(Provided(kind=kind, name=name, obj=obj, plugin=_plugin, description=description))

            try:
                with stdout_to_stderr():
                    impl.function(register=register)
            except (Exception, SystemExit) as exc:  # a hook that raises (or exits) is reported; the rest goes on
                failure = f"forensics_{kind}: {_describe(exc)}"
                if info.error is None or failure not in info.error:  # every hook's failure, not the last one's
                    info.error = failure if info.error is None else f"{info.error}; {failure}"
                info.refused[kind] = tried[len(mine):]
                info.failures[kind] = failure
                continue
            for provided in mine:
                if provided.name in claimants:
                    claimants[provided.name].append(provided.plugin)
                    continue
                first = found.get(provided.name)
                if first is None:
                    found[provided.name] = provided
                    continue
                bundled = [self.info.get(p.plugin, PluginInfo(p.plugin)).bundled for p in (first, provided)]
                if any(bundled) and not all(bundled):  # a bundled name stays the bundled plugin's
                    keeps, other = (first, provided) if bundled[0] else (provided, first)
                    found[provided.name] = keeps
                    self.info.setdefault(other.plugin, PluginInfo(other.plugin)).error = (
                        f"{SINGULAR[kind]} {provided.name!r} is the bundled plugin {keeps.plugin!r}'s name; this "
                        "plugin's is not loaded: rename it")
                    continue
                claimants[provided.name] = [first.plugin, provided.plugin]
            info.provides.setdefault(kind, []).extend(p.name for p in mine)
        for name, plugins in claimants.items():  # neither is used: which one a run got would depend on the path
            del found[name]
            plugins = sorted(plugins)
            message = (f"{SINGULAR[kind]} {name!r} is provided by both plugin "
                       + " and plugin ".join(map(repr, plugins)) + ", so by none: disable all but one with "
                       f"FORENSICS_DISABLE_PLUGINS={','.join(plugins[1:])}")
            self._conflicts[(kind, name)] = message
            for plugin in plugins:
                self.info.setdefault(plugin, PluginInfo(plugin)).error = message
        for info in self.info.values():  # what each one provides: the names it kept (not a bundled one's, not a clash)
            if kind in info.provides:
                info.provides[kind] = [n for n in info.provides[kind] if n in found and found[n].plugin == info.name]
        self._collected[kind] = found
        return found

    def get(self, kind: str, name: str, *, needed_by: str | None = None) -> Provided:
        """One provider by name, or a :class:`UsageError` that lists what exists. A name that a broken
        plugin tried to register is a :class:`PluginError` naming that plugin and its fault; a name no one
        has, while some plugin failed to load, names the failed plugins (one of them may have been meant).
        ``needed_by`` (``"the protocol"``): what recorded the name, so that a missing one is a
        :class:`PluginError` saying to install its plugin, not a name to choose."""
        found = self.collect(kind)
        if (kind, name) in self._conflicts:
            raise PluginError(self._conflicts[(kind, name)])
        if name not in found:
            for info in self.info.values():
                if info.error is not None and name in info.refused.get(kind, ()):
                    raise PluginError(f"{SINGULAR[kind]} {name!r} (plugin {info.name!r}) is broken: "
                                      f"{info.failures.get(kind, info.error)}; "
                                      "fix or uninstall the plugin, or choose another")
            known = ", ".join(sorted(found)) or "none"
            broken = sorted(i.name for i in self.info.values()  # its hook of this kind failed, or it did not load
                            if i.error is not None and (kind in i.refused or not (i.refused or i.provides)))
            failed = (f"; plugin(s) {', '.join(map(repr, broken))} failed to load and may have provided it "
                      "(`forensics plugins` says why)" if broken else " (see `forensics plugins`)")
            if needed_by is not None:
                off = (" (FORENSICS_DISABLE_PLUGIN_AUTOLOAD is set: only the bundled plugins load)"
                       if not self.autoload else f" (FORENSICS_DISABLE_PLUGINS skips {', '.join(sorted(self.disabled))})"
                       if self.disabled else "")
                raise PluginError(f"{needed_by} uses the {SINGULAR[kind]} {name!r}, which no installed plugin "
                                 f"provides{off}: install the package that provides it"
                                 + (failed if broken else " (`forensics plugins` lists the installed ones)"))
            raise UsageError(f"no {SINGULAR[kind]} named {name!r}; available: {known}{failed}")
        return found[name]

    def describe(self) -> list[PluginInfo]:
        """Every plugin, after collecting every kind (so hook failures show too)."""
        for kind in KINDS:
            try:
                self.collect(kind)
            except PluginError as exc:
                for info in self.info.values():
                    if info.error is None and repr(info.name) in str(exc):
                        info.error = str(exc)
        return sorted(self.info.values(), key=lambda i: (not i.bundled, i.name))


_host: PluginHost | None = None


def host() -> PluginHost:
    """The process-wide plugin host, built on first use."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def blamed(traceback: Any) -> PluginInfo | None:
    """The third-party plugin whose code raised the exception of ``traceback``: the innermost frame that runs in
    a loaded plugin's package (not a bundled one's); None when no plugin's code is on it, or no host is built
    (an error is never the moment to load plugins)."""
    if _host is None:
        return None
    packages = {}
    for info in _host.info.values():
        if not info.bundled and info.module and info.error is None:
            packages.setdefault(info.module.split(":")[0].split(".")[0], info)
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):  # innermost first: a plugin calling numpy that fails is the plugin's
        module = str(frame.f_globals.get("__name__", ""))
        top = module.split(".")[0]
        if top in packages:
            return packages[top]
    return None


def reset(new: PluginHost | None = None) -> PluginHost | None:
    """Replace the process-wide host (tests); returns the previous one."""
    global _host
    old, _host = _host, new
    return old


def build(provided: Provided, kind: type, make: Callable[[], Any]) -> Any:
    """What a plugin's factory or loader (``provided``) makes through ``make()``, checked: a failure that is not
    the tool's own error, or an object that is not a ``kind`` (an :class:`~forensics.encode.encoder.Encoder`, a
    :class:`~forensics.inversion.model.DiffusionModel`, ...), is a :class:`PluginError` naming the plugin."""
    from forensics.errors import ForensicsError

    where = f"{SINGULAR[provided.kind]} {provided.name} (plugin {provided.plugin})"
    try:
        with stdout_to_stderr():
            made = make()
    except ForensicsError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's own failure, said as one line naming it
        raise PluginError(f"{where} failed: {_describe(exc)}; fix or uninstall the plugin, or choose another "
                          f"{SINGULAR[provided.kind]} (`forensics plugins` lists them)") from exc
    if not isinstance(made, kind):
        raise PluginError(f"{where} gave a {type(made).__name__}, not a {kind.__name__}: the plugin is broken "
                          "(`forensics plugins` lists it)")
    return made


def broken(kind: str, name: str, what: str) -> PluginError:
    """The error of a plugin-provided ``kind`` object (``"encoders"``, ``"statistics"``, ...) called ``name`` that
    broke its contract at run time (``what`` it did), naming the plugin that provides it where one is known."""
    from forensics.errors import ForensicsError

    try:
        provided = host().collect(kind).get(name)
    except ForensicsError:
        provided = None
    plugin = f" (plugin {provided.plugin})" if provided is not None else ""
    return PluginError(f"{SINGULAR[kind]} {name}{plugin} {what}; fix or uninstall the plugin, or choose another "
                       f"{SINGULAR[kind]} (`forensics plugins` lists them)")


def get_encoder_factory(name: str) -> Callable[..., Any]:
    """The factory of the registered encoder ``name`` (see :class:`forensics.hookspecs.EncoderFactory`)."""
    return host().get("encoders", name).obj
