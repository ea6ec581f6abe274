"""Installed like any package: the built wheel, installed (not editable) into a fresh environment, attributes
its own demo set from another folder, with the core dependencies only.

The fresh environment gets this environment's third-party packages through a ``.pth`` file (nothing is
downloaded), except forensics itself and the extras' packages (open_clip, scikit-image, mlxtend with
pandas, matplotlib): so the run also shows that the default attribution needs none of them.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a 43 MB wheel, installs it, attributes 500 images: about a minute

ROOT = Path(__file__).resolve().parents[1]
NOT_COPIED = (".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "out")
# what the extras bring: hidden from the fresh environment, which has the core dependencies only
EXTRAS = ("open_clip", "skimage", "mlxtend", "matplotlib", "mpl_toolkits", "pylab", "pandas")
DEMO = Path("mnist-effnet-lite0") / "samples" / "ddpm" / "heldout.npz"


def _hidden(name: str) -> bool:
    stem = name.split("-")[0].split(".")[0].lower()
    return (stem.startswith("forensics") or "forensics" in name and name.startswith("__editable__")
            or stem in EXTRAS or stem in ("open_clip_torch", "scikit_image"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--wheel-dir", str(work / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((work / "dist").glob("forensics_attribution-*.whl"))

    env = work / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    deps = work / "deps"  # this environment's packages, but for forensics and the extras
    deps.mkdir()
    for here in site.getsitepackages():
        for entry in Path(here).iterdir():
            if not _hidden(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    python = env / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "zz_forensics_test_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", "--disable-pip-version-check", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return {"wheel": wheel, "env": env, "purelib": purelib, "elsewhere": elsewhere, "work": work}


def run(installed, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORENSICS_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", FORENSICS_DATA_DIR=str(installed["work"] / "data"),
               FORENSICS_CACHE_DIR=str(installed["work"] / "cache"))
    return subprocess.run([str(installed["env"] / "bin" / args[0]), *args[1:]], cwd=installed["elsewhere"],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_carries_the_registry_and_not_the_build_step(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    tracked = subprocess.run(["git", "ls-files", "registry"], cwd=ROOT, capture_output=True, text=True).stdout
    shipped = {"forensics/_registry/" + p.removeprefix("registry/") for p in tracked.split()
               if not Path(p).name.startswith(".")}
    assert shipped and shipped <= names
    assert "forensics/_build.py" not in names and not any(n.endswith((".lock", ".tmp")) for n in names)
    metadata = zipfile.ZipFile(installed["wheel"]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: forensics-attribution" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not any(m in r for r in core for m in ("open_clip", "mlxtend", "scikit-image", "matplotlib"))


def test_the_installed_tool_attributes_its_demo_set_from_another_folder(installed):
    where = run(installed, "python", "-c", "import forensics.registry as r; print(r.bundled_registry_path()); "
                                           "import importlib.util as u; print([m for m in ('open_clip', 'mlxtend', "
                                           "'skimage', 'matplotlib') if u.find_spec(m)])")
    assert where.returncode == 0, where.stderr
    registry, extras = where.stdout.splitlines()
    assert Path(registry) == installed["purelib"] / "forensics" / "_registry" and extras == "[]"
    demo = Path(registry) / DEMO
    result = run(installed, "forensics", "attribute", str(demo), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"]["generator"] == "ddpm" and doc["protocol"]["name"] == "mnist-effnet-vit-pixel"
    assert doc["input"]["n_images"] == 500
    assert not (installed["work"] / "data").exists()  # reading wrote no user registry

    plugins = json.loads(run(installed, "forensics", "plugins", "--json").stdout)
    bundled = {p["name"]: p for p in plugins["plugins"] if p["bundled"]}
    assert {"timm", "ct", "matchers", "datasets"} <= set(bundled)
    assert {p["distribution"] for p in bundled.values()} == {"forensics-attribution"}

    missing = run(installed, "forensics", "curate", "digits:train", "--kind", "background-real", "--count", "2",
                  "--out", str(installed["work"] / "curated.npz"))
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("pip install 'forensics-attribution[curation]'")
    assert len(missing.stderr.strip().splitlines()) == 1
