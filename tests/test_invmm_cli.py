"""`forensics invmm` and `forensics.invmm`: the plugin points end to end, the JSON document, the report and
the errors that come before any work."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import forensics
from forensics.cli import app
from forensics.errors import UsageError
from forensics.hookspecs import hookimpl
from forensics.inversion.model import CopySimilarity, DiffusionModel
from forensics.zoo.data import mnist_split

TINY = ["--set", "noise_batch=2", "--set", "max_steps=4", "--set", "check_every=2", "--set", "verify_steps=2",
        "--set", "verify_samples=2"]
TINY_SETTINGS = {"noise_batch": 2, "max_steps": 4, "check_every": 2, "verify_steps": 2, "verify_samples": 2}


def cli(*args):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


class Memorizer(DiffusionModel):
    """The exact ε-predictor of the one-point distribution {x*} on 28×28 grey images (see test_invmm)."""

    def __init__(self, x_star: torch.Tensor):
        self.x_star = x_star
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
        self.sample_shape = self.image_shape = (1, 28, 28)
        self.name = "toy-memorizer"

    def predict_noise(self, x_t, t, condition=None):
        a = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * self.x_star) / (1 - a).sqrt()


@pytest.fixture
def digits(tmp_path):
    train = mnist_split()[0]
    path = tmp_path / "digits.npz"
    np.savez_compressed(path, images=train[[0, 400, 5]])
    return path, train[[0, 400, 5]]


@pytest.fixture
def toy_model(register_plugin, digits):
    """A third party's diffusion model that memorized the first digit, and a similarity of its own."""
    x_star = torch.from_numpy(digits[1][0]).float().div(127.5).sub(1).unsqueeze(0)

    class Exact(CopySimilarity):
        name = "exact"
        threshold = 0.99

        def __call__(self, samples, target):
            return 1 - (samples - target).abs().flatten(1).amax(1)

    register_plugin(types.SimpleNamespace(
        forensics_diffusion_models=hookimpl(
            lambda register: register("toy-memorizer", lambda *, path=None, device="cpu": Memorizer(x_star))),
        forensics_copy_similarities=hookimpl(
            lambda register: register("exact", lambda *, threshold=None: Exact()))), "toy")


def test_list_shows_models_similarities_and_presets(plugin_host):
    code, stdout, _ = cli("invmm", "--list", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert {"mnist-dup", "mnist-ddpm", "zoo-unet"} <= set(doc["models"])
    assert doc["models"]["zoo-unet"]["opens_paths"]
    assert {"pixel-correlation", "sscd"} <= set(doc["similarities"])
    assert {"ddpm-cifar10", "ldm-faces", "sd-v1", "sd-v2", "mnist"} <= set(doc["presets"])


def test_a_third_party_model_through_the_plugin_points(toy_model, digits):
    """The memorized digit is reproduced at the first check; the two others never are."""
    path, _ = digits
    result = forensics.invmm(path, model="toy-memorizer", similarity="exact",
                             settings={**TINY_SETTINGS, "max_steps": 6, "verify_steps": 5})
    assert [r.success for r in result.inversions] == [True, False, False]
    assert result.inversions[0].steps == 2 and math.isfinite(result.inversions[0].score)
    assert result.scores[1:] == [math.inf, math.inf]
    doc = result.to_dict()
    assert [im["index"] for im in doc["images"]] == [0, 1, 2]
    assert doc["images"][1]["score"] is None and doc["summary"]["succeeded"] == 1
    assert doc["similarity"] == {"name": "exact", "threshold": 0.99}
    from forensics.schemas import validate

    validate(doc)


@pytest.mark.slow
def test_cli_json_html_and_api_agree_on_the_zoo_network(plugin_host, digits, tmp_path):
    path, _ = digits
    html = tmp_path / "report.html"
    code, stdout, stderr = cli("invmm", str(path), "--model", "mnist-ddpm", *TINY, "--json", "--html", str(html))
    assert code == 0, stderr
    doc = json.loads(stdout)
    from forensics.schemas import validate

    validate(doc)
    assert doc["schema"] == "forensics.invmm/1" and doc["preset"] == "mnist"  # the model's own preset
    assert doc["similarity"]["name"] == "pixel-correlation" and doc["settings"]["max_steps"] == 4
    assert len(doc["images"]) == 3 and all(im["steps"] == 4 or im["success"] for im in doc["images"])
    page = html.read_text()
    assert page.count('class="strip"') == 3 and "forensics.invmm/1" in page
    api = forensics.invmm(path, model="mnist-ddpm", settings=TINY_SETTINGS).to_dict()
    for key in ("input", "model", "preset", "settings", "similarity", "seed", "summary"):
        assert api[key] == doc[key], key
    for a, b in zip(api["images"], doc["images"]):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_a_zoo_unet_file_opens_by_path(plugin_host, digits):
    from forensics.zoo.unet import network_path

    path, _ = digits
    result = forensics.invmm(path, model=str(network_path("mnist-ddpm")), settings=TINY_SETTINGS)
    assert result.model["class"] == "ZooDiffusion" and len(result.inversions) == 3


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown InvMM preset"),
    (["--set", "steps=3"], "not an InvMM parameter"),
    (["--set", "max_steps"], "NAME=VALUE"),
    (["--set", "max_steps=lots"], "not a whole number"),
    (["--set", "noise_batch=0"], "noise_batch"),
    (["--similarity", "ssim"], "unknown copy similarity"),
    (["--model", "no-such-model"], "unknown diffusion model"),
    (["--model", "no-such-dir/my-ddpm.safetensors"], "the model no-such-dir/my-ddpm.safetensors does not exist"),
    (["--model", "mnist-dup", "--registry", "."], "weights are not in the registry"),
    (["--amp", "fp16"], "bf16 only"),
    (["--amp", "fp8"], "bf16 or fp16"),
    (["--similarity", "sscd"], "--similarity-file"),
])
def test_bad_options_fail_in_one_line_before_any_work(plugin_host, digits, args, message, monkeypatch):
    monkeypatch.delenv("FORENSICS_SSCD", raising=False)
    path, _ = digits
    code, stdout, stderr = cli("invmm", str(path), "--model", "mnist-ddpm", *args)
    assert code != 0 and stdout == ""
    assert message in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--similarity", "sscd"], ["--preset", "sd-v1"]])
def test_a_similarity_that_cannot_be_built_fails_before_the_model_loads(plugin_host, digits, tmp_path, monkeypatch,
                                                                       args):
    """An SSCD file missing (or a folder given for it) is known before a model of gigabytes is read."""
    import forensics.api

    def never(*_, **__):
        raise AssertionError("the diffusion model was loaded before the similarity was checked")

    monkeypatch.setattr(forensics.api, "_diffusion_model", never)
    monkeypatch.delenv("FORENSICS_SSCD", raising=False)
    path, _ = digits
    code, _, stderr = cli("invmm", str(path), *args)
    assert code == 2 and "--similarity-file" in stderr
    code, _, stderr = cli("invmm", str(path), *args, "--similarity-file", str(tmp_path))
    assert code == 2 and "is a folder, not the file" in stderr


def test_list_with_images_is_refused_rather_than_ignoring_them(digits):
    code, stdout, stderr = cli("invmm", str(digits[0]), "--list")
    assert code == 2 and stdout == "" and "--list lists what is installed and runs nothing" in stderr


def test_a_file_no_loader_opens_is_refused(plugin_host, digits, tmp_path):
    path, _ = digits
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 64)
    code, _, stderr = cli("invmm", str(path), "--model", str(other))
    assert code != 0 and "no diffusion-model loader opens" in stderr


def test_images_are_brought_to_the_models_size_and_channels(plugin_host, tmp_path):
    """RGB 56×56 digits are read as grey 28×28, as the zoo network needs."""
    grey = mnist_split()[0][:2]
    rgb = np.repeat(np.kron(grey, np.ones((2, 2), dtype=np.uint8))[..., None], 3, axis=3)
    path = tmp_path / "rgb.npy"
    np.save(path, rgb)
    result = forensics.invmm(path, model="mnist-ddpm", settings=TINY_SETTINGS)
    assert result.targets.shape == (2, 28, 28)
    assert np.abs(result.targets.astype(int) - grey.astype(int)).mean() < 8
    assert not [w for w in result.warnings if "colour" in w]  # grey saved as RGB is grey
    rgb[0, ..., 0] = 255  # one of them tinted red: brought to grey, and said
    np.save(path, rgb)
    (line,) = [w for w in forensics.invmm(path, model="mnist-ddpm", settings=TINY_SETTINGS).warnings if "colour" in w]
    assert line.startswith("1 of the 2 images are in colour, and mnist-ddpm makes grey images: they were brought to "
                           "grey (ITU-R 601 luma)")


def test_grey_images_for_a_model_of_colour_images_are_warned_of_and_alike_ones_are_not():
    from forensics.api import _model_colour

    grey, colour = np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4, 3), np.uint8)
    colour[:, 0, 0] = (200, 10, 10)
    assert _model_colour(grey, 3, "m").startswith("the images are grey, and m makes colour images")
    assert _model_colour(colour, 1, "m").startswith("2 of the 2 images are in colour, and m makes grey images")
    assert _model_colour(colour, 3, "m") is None and _model_colour(grey, 1, "m") is None


@pytest.mark.parametrize("scores, success", [([math.inf] * 3, [False] * 3),
                                             ([0.01, 0.5, math.inf], [True, True, False])])
def test_the_score_plot_is_readable_with_and_without_reproduced_images(scores, success):
    pytest.importorskip("matplotlib")
    from forensics.report import plots

    fig = plots.invmm_figure(scores, success, [0.99, 0.4, None], 0.985)
    assert plots.layout_problems(fig) == []


def test_each_image_has_a_bar_with_step_lambda_loss_and_best_similarity(toy_model, digits, monkeypatch):
    """On a terminal, one bar per image, in input order, each showing its step, λ, loss and best similarity."""
    import io

    from rich.console import Console

    import forensics.cli.invmm as cli_invmm

    screen = io.StringIO()
    monkeypatch.setattr(cli_invmm, "err", Console(file=screen, force_terminal=True, width=160, color_system=None))
    path, _ = digits
    code, stdout, stderr = cli("invmm", str(path), "--model", "toy-memorizer", "--similarity", "exact", *TINY,
                               "--set", "verify_steps=5", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)  # the bars show the run the document records
    import re

    last = {}
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", screen.getvalue())  # cursor moves: each redraw a line
    for line in shown.splitlines():
        if line.strip().startswith("image"):
            last[int(line.split()[1])] = line
    assert sorted(last) == [0, 1, 2]
    assert "step    2/4" in last[0] and "copied" in last[0] and "not copied" not in last[0]  # stopped at 2
    for i in (1, 2):
        assert "step    4/4" in last[i] and "not copied" in last[i]
    for i, line in last.items():
        image = doc["images"][i]
        assert f"λ {image['lambda']:.3g} " in line and "loss 0." in line
        assert f"best sim {image['best_similarity']:.4f}" in line


def test_a_folder_names_each_images_file_in_input_order(toy_model, digits, tmp_path):
    from PIL import Image

    from forensics.schemas import validate

    folder = tmp_path / "suspects"
    (folder / "b").mkdir(parents=True)
    _, pixels = digits
    names = ["a.png", "b/c.png", "d.png"]  # the reading order: sorted by path within the folder
    for name, image in zip(names, pixels):
        Image.fromarray(image).save(folder / name)
    code, stdout, stderr = cli("invmm", str(folder), "--model", "toy-memorizer", "--similarity", "exact", *TINY,
                               "--set", "verify_steps=5", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    validate(doc)
    assert [im["file"] for im in doc["images"]] == names and [im["index"] for im in doc["images"]] == [0, 1, 2]
    assert [im["success"] for im in doc["images"]] == [True, False, False]
    code, stdout, _ = cli("invmm", str(folder), "--model", "toy-memorizer", "--similarity", "exact", *TINY)
    assert code == 0 and all(name in stdout for name in names)
    array = forensics.invmm(pixels, model="toy-memorizer", similarity="exact", settings=TINY_SETTINGS).to_dict()
    assert all("file" not in im for im in array["images"])  # an array has no files


def test_sscd_from_the_users_torchscript_file_on_the_command_line(toy_model, digits, tmp_path):
    """--similarity sscd --similarity-file: a tiny TorchScript descriptor made here judges the copies."""

    class Descriptor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3 * 28 * 28, 16)

        def forward(self, x):
            return torch.nn.functional.normalize(self.proj(x.flatten(1)), dim=1)

    torch.manual_seed(0)
    file = tmp_path / "sscd_tiny.torchscript.pt"
    torch.jit.script(Descriptor().eval()).save(str(file))
    path, _ = digits
    code, stdout, stderr = cli("invmm", str(path), "--model", "toy-memorizer", "--similarity", "sscd",
                               "--similarity-file", str(file), "--threshold", "0.999", *TINY,
                               "--set", "verify_steps=5", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    from forensics.schemas import validate

    validate(doc)
    assert doc["similarity"]["name"] == "sscd" and doc["similarity"]["file"] == str(file)
    assert doc["similarity"]["threshold"] == 0.999 and doc["settings"]["similarity"] == "sscd"
    first = doc["images"][0]
    assert first["success"] and first["steps"] == 2
    assert min(first["similarities"]) == pytest.approx(1.0, abs=1e-4)  # an exact copy: the same descriptor


def test_list_fits_an_80_column_terminal(plugin_host):
    """Every preset's every value is readable in 80 columns (nothing cut to …)."""
    result = CliRunner().invoke(app, ["invmm", "--list"], env={"COLUMNS": "80"})  # whatever ran before
    code, stdout = result.exit_code, result.stdout
    assert code == 0
    presets = stdout[stdout.index("Presets"):]
    assert "…" not in presets.replace("1…7", "")
    assert all(len(line) <= 80 for line in stdout.splitlines())
    for name in ("ddpm-cifar10", "ldm-faces", "sd-v1", "sd-v2", "mnist", "pixel-correlation", "0.0005"):
        assert name in presets


def test_bf16_on_the_cpu_autocasts_the_optimisation_and_never_the_verification(toy_model, digits, monkeypatch):
    """--amp bf16 is allowed on the CPU (measured to keep the score, docs/invmm.md): the optimisation's network
    calls run under bf16 autocast, verification in float32; the run records it. Where the CPU has no bf16
    arithmetic, a warning (one line on the command line) says it will be slower."""
    import forensics.api

    seen = {True: [], False: []}  # grad enabled (optimisation) / not (verification) -> autocast dtypes
    predict = Memorizer.predict_noise

    def watched(self, x_t, t, condition=None):
        seen[torch.is_grad_enabled()].append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                                             else None)
        return predict(self, x_t, t, condition)

    monkeypatch.setattr(Memorizer, "predict_noise", watched)
    path, _ = digits
    code, stdout, stderr = cli("invmm", str(path), "--model", "toy-memorizer", "--similarity", "exact", *TINY,
                               "--set", "verify_steps=5", "--amp", "bf16", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["compute"] == {"device": "cpu", "amp": "bf16"} and doc["images"][0]["success"]
    assert seen[True] and set(seen[True]) == {torch.bfloat16}
    assert seen[False] and set(seen[False]) == {None}
    monkeypatch.setattr(forensics.api, "_cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no bfloat16 arithmetic .* slower than float32 here; drop --amp"):
        code, stdout, _ = cli("invmm", str(path), "--model", "toy-memorizer", "--similarity", "exact", *TINY,
                              "--amp", "bf16", "--json")
    assert code == 0 and json.loads(stdout)["compute"]["amp"] == "bf16"


def test_a_broken_model_or_similarity_plugin_is_named_and_does_not_stop_the_others(register_plugin, digits, tmp_path):
    """A loader or factory that raises or makes something else, and an `accepts` check that raises, are one line
    naming the plugin; a path the bundled loader opens still opens (its check is not skipped for another's)."""
    def boom(**kwargs):
        raise RuntimeError("loader boom")

    def refuses(path):
        raise RuntimeError("accepts boom")

    boom.accepts = refuses
    register_plugin(types.SimpleNamespace(
        forensics_diffusion_models=hookimpl(lambda register: (register("aa-boom", boom),
                                                              register("garbage-model", lambda **kw: 42))),
        forensics_copy_similarities=hookimpl(lambda register: register("garbage-sim", lambda **kw: 42))), "broken")
    path, _ = digits
    for options, said in ((["--model", "aa-boom"], "diffusion model aa-boom (plugin broken) failed: RuntimeError: "
                                                   "loader boom"),
                          (["--model", "garbage-model"], "diffusion model garbage-model (plugin broken) gave a int, "
                                                         "not a DiffusionModel"),
                          (["--similarity", "garbage-sim"], "copy similarity garbage-sim (plugin broken) gave a int, "
                                                            "not a CopySimilarity")):
        code, _, err = cli("invmm", str(path), *options, *TINY)
        assert code == 1 and said in err and len(err.strip().splitlines()) == 1, err
    from forensics.zoo.unet import network_path

    weights = tmp_path / "copy.safetensors"
    weights.write_bytes(network_path("mnist-dup").read_bytes())
    with pytest.warns(UserWarning, match="aa-boom \\(plugin broken\\) failed to check copy.safetensors"):
        result = forensics.invmm(path, model=str(weights), settings=TINY_SETTINGS)
    assert len(result.inversions) == 3


@pytest.mark.parametrize("options, said", [
    (["--set", "max_steps=20"], "max_steps (20) is below check_every (50): no image would ever be checked"),
    (["--set", "noise_batch=100000000000000000000"], "noise_batch must be a whole number from 1 to 2**31 - 1"),
    (["--seed", "20000000000000"], "--seed takes a whole number from 0 to 2**40 - 1"),
    (["--threshold", "nan"], "--threshold takes a finite number"),
    (["--threshold", "-2"], "--threshold -2 lies outside the -1 to 1 that pixel-correlation scores"),
    (["--set", "guidance=1,2"], "need a text-conditioned model; mnist-dup is unconditional"),
])
def test_settings_that_could_not_measure_anything_are_usage_errors(digits, options, said):
    path, _ = digits
    code, _, err = cli("invmm", str(path), "--set", "verify_samples=2", *options)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err


def test_guidance_as_a_number_or_text(monkeypatch):
    from forensics.inversion.measure import PRESETS

    assert PRESETS["mnist"].replace(guidance=2).guidance == (2.0,)
    with pytest.raises(ValueError, match="guidance must be a number or a list of numbers, got '12'"):
        PRESETS["mnist"].replace(guidance="12")


def test_one_image_file_and_a_folder_of_sizes_are_measured_at_the_models_size(digits, tmp_path):
    from PIL import Image

    _, images = digits
    Image.fromarray(images[0]).save(tmp_path / "one.png")
    one = forensics.invmm(tmp_path / "one.png", settings=TINY_SETTINGS)
    assert len(one.inversions) == 1 and one.targets.shape == (1, 28, 28)
    assert one.to_dict()["images"][0]["file"] == "one.png"  # not "." (the file relative to itself)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(images[0]).save(mixed / "a.png")
    Image.fromarray(images[1]).resize((56, 56)).convert("RGB").save(mixed / "b.png")
    both = forensics.invmm(mixed, settings=TINY_SETTINGS)
    assert len(both.inversions) == 2 and both.targets.shape == (2, 28, 28)
    code, out, _ = cli("invmm", "--list")
    assert code == 0 and "[opens paths]" in out


def test_a_safetensors_file_of_other_shapes_is_said_to_be_no_zoo_unet(tmp_path):
    from safetensors.torch import save_file

    from forensics.errors import UsageError
    from forensics.zoo.unet import load_network

    save_file({k: torch.zeros(2) for k in ("inc.weight", "m1.c1.weight", "temb.0.weight")}, tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match="does not hold the zoo's diffusion UNet"):
        load_network(tmp_path / "w.safetensors")


def test_what_reading_the_files_dropped_is_in_every_report(toy_model, digits, tmp_path):
    # a digit whose file carries transparency, and an animation of which only the first frame is read: InvMM
    # reads files as attribution does, and its reports say what was dropped, as attribution's do
    from PIL import Image

    from forensics.schemas import validate

    folder = tmp_path / "suspects"
    folder.mkdir()
    _, pixels = digits
    Image.fromarray(pixels[0]).save(folder / "a.png")
    rgba = Image.fromarray(pixels[1]).convert("RGBA")
    rgba.putalpha(Image.fromarray((pixels[1] > 0).astype(np.uint8) * 255))
    rgba.save(folder / "b.png")
    frames = [Image.fromarray(p) for p in pixels]
    frames[0].save(folder / "c.gif", save_all=True, append_images=frames[1:])
    code, stdout, stderr = cli("invmm", str(folder), "--model", "toy-memorizer", "--similarity", "exact", *TINY,
                               "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    validate(doc)
    said = " ".join(doc["warnings"])
    assert "transparency" in said and "c.gif holds 3 frames" in said, doc["warnings"]
    assert all(w in " ".join(stderr.split()) for w in (" ".join(w.split()) for w in doc["warnings"]))
    code, stdout, _ = cli("invmm", str(folder), "--model", "toy-memorizer", "--similarity", "exact", *TINY)
    assert code == 0 and "c.gif holds 3 frames" in " ".join(stdout.split())  # the text report, the record
    array = forensics.invmm(pixels, model="toy-memorizer", similarity="exact", settings=TINY_SETTINGS).to_dict()
    assert "warnings" not in array  # nothing was dropped from an array


@pytest.mark.parametrize("answer, said", [
    (lambda samples: torch.ones(1), "gave shape (1,) for 2 samples, not one number each"),  # passed them all
    (lambda samples: torch.full((len(samples),), float("nan")), "gave shape (2,) with NaN for 2 samples"),
    (lambda samples: [1.0] * len(samples), "gave a list for 2 samples"),
    (lambda samples: 1 / 0, "copy similarity broken-sim failed: ZeroDivisionError"),
])
def test_a_similarity_plugin_that_answers_wrong_is_named_not_a_verdict(register_plugin, digits, answer, said):
    """A copy similarity giving one score for all the samples made every image "reproduced"; one giving NaN,
    a list or raising ended as "unexpected …" or a silent ∞. Each is a one-line error naming the similarity."""
    class Broken(CopySimilarity):
        name = "broken-sim"
        threshold = 0.5

        def __call__(self, samples, target):
            return answer(samples)

    register_plugin(types.SimpleNamespace(forensics_copy_similarities=hookimpl(
        lambda register: register("broken-sim", lambda *, threshold=None: Broken()))), "shoddy")
    code, _, err = cli("invmm", str(digits[0]), "--similarity", "broken-sim", *TINY)
    assert code == 1 and said in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("predict, said", [
    (lambda x: torch.full_like(x, float("nan")), "diffusion model broken-model predicted NaN or infinite noise"),
    (lambda x: torch.zeros(len(x), 3, 28, 28), "predicted noise of shape (4, 3, 28, 28) for x_t of shape (4, 1, 28, 28)"),
    (lambda x: 1 / 0, "diffusion model broken-model failed to predict the noise: ZeroDivisionError"),
])
def test_a_diffusion_model_that_predicts_wrong_is_named_not_read_as_never_reproduced(register_plugin, digits,
                                                                                    predict, said):
    """A model predicting NaN noise (broken, or a float16 model overflowing) gave every image ∞, "never
    reproduced"; one of another shape or raising ended as "unexpected …"."""
    x_star = torch.zeros(1, 28, 28)

    class Broken(Memorizer):
        def __init__(self, x_star):
            super().__init__(x_star)
            self.name = "broken-model"

        def predict_noise(self, x_t, t, condition=None):
            return predict(x_t)

    register_plugin(types.SimpleNamespace(forensics_diffusion_models=hookimpl(
        lambda register: register("broken-model", lambda *, path=None, device="cpu": Broken(x_star)))), "shoddy")
    code, _, err = cli("invmm", str(digits[0]), "--model", "broken-model", "--similarity", "pixel-correlation",
                       "--group", "2", *TINY)
    assert code == 1 and said in err and len(err.strip().splitlines()) == 1, err


def test_a_run_that_diverges_says_so_instead_of_never_reproduced(toy_model, digits):
    """With a learning rate that makes μ run off, every check was NaN and every image read ∞, "never
    reproduced"; then the model got the blame for the NaN noise it was fed."""
    with pytest.raises(UsageError, match=r"InvMM diverged.*lower the learning rate \(--set lr=\)"):
        forensics.invmm(digits[0], model="toy-memorizer", similarity="exact", settings={**TINY_SETTINGS, "lr": 1e30})
    code, _, err = cli("invmm", str(digits[0]), "--set", "lr=100", *TINY[:2], "--set", "max_steps=100",
                       "--set", "check_every=50", "--set", "verify_steps=2", "--set", "verify_samples=2")
    assert code == 2 and "InvMM diverged" in err and len(err.strip().splitlines()) == 1, err


def test_settings_that_are_not_a_mapping_are_said_to_be_so(digits):
    """forensics.invmm(..., settings=[("max_steps", 500)]) said "InvMMSettings.replace() argument after **
    must be a mapping, not list", a message about the code, not the call."""
    with pytest.raises(UsageError, match=r"settings is a mapping of InvMM parameters to values .*not list"):
        forensics.invmm(digits[0], settings=[("max_steps", 500)])


@pytest.mark.parametrize("attribute, value, said", [
    ("image_shape", (28, 28), "image_shape is (28, 28), not 3 positive whole numbers"),
    ("image_shape", (28, 28, 1), "image_shape is (28, 28, 1): (C, H, W) with C 1 or 3 channels"),
    ("sample_shape", (1, 0, 28), "sample_shape is (1, 0, 28), not positive whole numbers"),
    ("alphas_cumprod", torch.linspace(0.1, 0.9, 10, dtype=torch.float64), "must lie in (0, 1] and not increase"),
])
def test_a_diffusion_model_declaring_malformed_shapes_or_schedule_is_named_before_any_image(
        register_plugin, digits, attribute, value, said):
    """An image shape in (H, W, C) order or of two numbers failed as "unexpected ValueError" where the images
    were brought to it; an increasing schedule gave nonsense KL. Each is the plugin's fault, said in one line."""
    class Malformed(Memorizer):
        def __init__(self, x_star):
            super().__init__(x_star)
            setattr(self, attribute, value)

    register_plugin(types.SimpleNamespace(forensics_diffusion_models=hookimpl(
        lambda register: register("malformed", lambda *, path=None, device="cpu": Malformed(torch.zeros(1, 28, 28))))),
        "shoddy")
    code, _, err = cli("invmm", str(digits[0]), "--model", "malformed", "--similarity", "pixel-correlation", *TINY)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "diffusion model malformed (plugin shoddy) declares" in err and said in err, err
