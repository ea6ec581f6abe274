"""A corpus of bad inputs and faults, built here, run through the real command line (issue 26).

Every kind must end the same way: exit 1 (a failed run) or 2 (wrong usage), exactly one line on stderr
(no traceback, no usage box, no raw library warning, no "unexpected" internal error), stdout empty or
one JSON document, and nothing half-written: the case's folder (its inputs and outputs) and the
registry it read are byte for byte what they were before.

Most kinds run in this process through :func:`forensics.cli.commands.run` (the console script's own
entry point, with its stdout and stderr captured); those that can block, exhaust memory or need a
signal run as real subprocesses of the ``forensics`` console script, marked slow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

FORENSICS = str(Path(sys.executable).with_name("forensics"))
PROTOCOL = "digits-vit"


# -- the small registry every case reads ------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry with one protocol (digits, a random tiny ViT, m = 20) and two generators whose curves
    are written directly (no embedding: every case fails before it), and a valid query set."""
    from forensics import plugins
    from forensics.cli.commands import run
    from forensics.protocol import Fingerprint
    from forensics.registry import Registry

    old = plugins.reset(plugins.PluginHost(autoload=False))
    root = tmp_path_factory.mktemp("corpus")
    reg = root / "registry"
    try:
        code = run(["protocol", "create", PROTOCOL, "--dataset", "digits", "--encoder",
                    "vit_tiny_patch16_224.augreg_in21k", "--weights", "random", "--option", "image_size=32",
                    "--k", "3", "--projection", "16", "--tau", "0.25", "--batch-size", "20", "--default", "--registry", str(reg)])
        assert code == 0
        r = Registry.open(reg)
        proto = r.protocol(PROTOCOL)
        rng = np.random.default_rng(0)
        for g, gen in enumerate(("rotate", "noise")):
            for i in range(2):
                fp = Fingerprint.from_values(proto.digest, (rng.normal(size=len(proto.layers)) + 3 * g).tolist())
                r.enroll(PROTOCOL, gen, [fp], {"input_sha256": "sha256:" + f"{g}{i}" * 32, "n_images": 20})
        query = root / "query.npz"
        np.savez(query, images=rng.integers(0, 256, size=(20, 8, 8), dtype=np.uint8))
        yield {"registry": reg, "query": query}
    finally:
        plugins.reset(old)


# -- building bad files -----------------------------------------------------------------------------
def png_bytes(width: int = 8, height: int = 8, *, idat: bytes | None = None) -> bytes:
    """A grey 8-bit PNG; ``idat`` replaces its image data (a bomb declares a huge size with a tiny one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = idat if idat is not None else zlib.compress(b"".join(b"\0" + bytes(range(width)) for _ in range(height)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def jpeg_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format="JPEG")
    return buf.getvalue()


def folder(d: Path, files: dict[str, bytes]) -> Path:
    f = d / "images"
    f.mkdir()
    for name, data in files.items():
        (f / name).write_bytes(data)
    return f


def npy(d: Path, array: np.ndarray, name: str = "x.npy") -> Path:
    np.save(d / name, array, allow_pickle=True)
    return d / name


def npz(d: Path, name: str = "x.npz", **arrays) -> Path:
    np.savez(d / name, **arrays)
    return d / name


def raw(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def huge_header_npy(d: Path) -> Path:
    """An .npy whose header declares 10¹² images of 8×8 and holds 64 bytes."""
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000, 8, 8), }"
    header += " " * (118 - len(header)) + "\n"
    return raw(d, "huge.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64))


def uint8s(n: int = 20, *shape: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, *(shape or (8, 8))), dtype=np.uint8)


def fifo(d: Path, name: str = "pipe") -> Path:
    os.mkfifo(d / name)
    return d / name


def symlinked(d: Path, name: str) -> Path:
    """``name`` in ``d``: a symbolic link to a file that holds "keep"."""
    (d / "target").write_text("keep")
    (d / name).symlink_to(d / "target")
    return d / name


def registry_copy(d: Path, world) -> Path:
    copy = d / "reg"
    shutil.copytree(world["registry"], copy, symlinks=True)
    return copy


def generator_file(reg: Path, name: str = "rotate") -> Path:
    return reg / PROTOCOL / "generators" / f"{name}.yaml"


# -- a case, and the snapshot that shows nothing was half-written -----------------------------------
@dataclass
class Case:
    id: str
    build: Callable[[Path, dict], list[str]]   # (case folder, world) -> argv
    codes: tuple[int, ...] = (2,)              # the exit codes that are right for it
    xfail: str | None = None                   # an issue-26 item another helper is fixing now
    subprocess: bool = False                   # run the console script (may block or exhaust memory)
    timeout: float = 60.0
    signal_after: float | None = None          # send SIGINT this many seconds after the start
    hold_lock: bool = False                    # the test holds the registry's write lock meanwhile
    env: dict[str, str] = field(default_factory=dict)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots`` (links not followed): its type, and a regular file's size and hash."""
    found: dict[str, tuple] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        for here, dirs, files in os.walk(root):
            for name in dirs + files:
                p = os.path.join(here, name)
                if name == ".lock":  # the registry's lock file is made empty and kept
                    continue
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    with open(p, "rb") as fh:
                        found[p] = ("file", st.st_size, hashlib.sha256(fh.read()).hexdigest())
                elif stat.S_ISLNK(st.st_mode):
                    found[p] = ("link", os.readlink(p))
                else:
                    found[p] = ("dir" if stat.S_ISDIR(st.st_mode) else "special",)
    return found


def A(*rest: str) -> Callable[[Path, dict], list[str]]:
    """``attribute`` of the valid query against the corpus registry, with ``rest`` appended."""
    return lambda d, w: ["attribute", str(w["query"]), "--registry", str(w["registry"]), *rest]


def I(make: Callable[[Path], Path], *rest: str, command: str = "attribute") -> Callable[[Path, dict], list[str]]:
    """``attribute`` (or ``memorization``) of the input ``make`` builds in the case folder."""
    return lambda d, w: [command, os.fspath(make(d)), "--registry", str(w["registry"]), *rest]


def R(damage: Callable[[Path], None], *argv: str, validate: bool = False) -> Callable[[Path, dict], list[str]]:
    """A command on a copy of the registry that ``damage`` harms (``validate``: `registry validate --json`)."""
    def build(d: Path, w: dict) -> list[str]:
        reg = registry_copy(d, w)
        damage(reg)
        if validate:
            return ["registry", "validate", "--registry", str(reg), "--json"]
        return [*(argv or ("attribute", str(w["query"]))), "--registry", str(reg)]
    return build


def write(path: Path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def truncate_yaml(p: Path) -> None:
    cut(p, 0.5)


ALIAS_BOMB = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(9))


def nan_curve(reg: Path) -> None:
    p = generator_file(reg)
    text = p.read_text()
    start = text.index("curve:")
    line_end = text.index("\n", start)
    first_value = text.index("[", start, line_end) + 1 if "[" in text[start:line_end] else None
    if first_value is None:  # a block list: "- 1.23"
        dash = text.index("- ", line_end) + 2
        end = text.index("\n", dash)
        write(p, text[:dash] + ".nan" + text[end:])
    else:
        end = min(i for i in (text.index(",", first_value), text.index("]", first_value)) if i > 0)
        write(p, text[:first_value] + ".nan" + text[end:])


def link_generators_elsewhere(reg: Path) -> None:
    other = reg.parent / "other"
    shutil.copytree(reg, other, symlinks=True)
    gens = reg / PROTOCOL / "generators"
    shutil.rmtree(gens)
    gens.symlink_to(other / PROTOCOL / "generators", target_is_directory=True)


def wrong_schema(reg: Path) -> None:
    p = reg / PROTOCOL / "protocol.yaml"
    write(p, p.read_text().replace("schema_version: 1", "schema_version: 99"))


def zero_link(reg: Path) -> None:
    p = generator_file(reg)
    p.unlink()
    p.symlink_to("/dev/zero")


NON_UTF8 = os.fsdecode(b"caf\xe9-\xff")

CASES = [
    # -- image inputs: empty, truncated, corrupt, wrong type, shape, values --------------------------
    Case("empty-npz", I(lambda d: raw(d, "x.npz", b""))),
    Case("empty-npy", I(lambda d: raw(d, "x.npy", b""))),
    Case("empty-png", I(lambda d: folder(d, {"a.png": b""}))),
    Case("truncated-png", I(lambda d: folder(d, {"a.png": png_bytes()[:40]}))),
    Case("corrupt-png", I(lambda d: folder(d, {"a.png": b"\x89PNG\r\n\x1a\n" + os.urandom(200)}))),
    Case("truncated-jpeg", I(lambda d: folder(d, {"a.jpg": jpeg_bytes()[:60]}))),
    Case("corrupt-jpeg", I(lambda d: folder(d, {"a.jpg": b"\xff\xd8\xff" + os.urandom(300)}))),
    Case("text-as-png", I(lambda d: folder(d, {"a.png": b"hello, not an image\n"}))),
    Case("corrupt-npz", I(lambda d: raw(d, "x.npz", b"PK\x03\x04" + os.urandom(200)))),
    Case("truncated-npz", I(lambda d: cut(npz(d, images=uint8s())))),
    Case("truncated-npy", I(lambda d: cut(npy(d, uint8s())))),
    Case("npy-not-npy", I(lambda d: raw(d, "x.npy", b"just text\n" * 10))),
    Case("npz-no-images-key", I(lambda d: npz(d, a=uint8s(), b=uint8s()))),
    Case("npz-images-not-array", I(lambda d: raw(d, "x.npz", _zip_with("images.npy", b"nonsense")))),
    Case("npy-pickled-object", I(lambda d: npy(d, np.array([{"a": 1}, None], dtype=object)))),
    Case("npy-strings", I(lambda d: npy(d, np.array(["a", "b"] * 10)))),
    Case("npy-complex", I(lambda d: npy(d, uint8s().astype(np.complex64)))),
    Case("npy-nan", I(lambda d: npy(d, np.full((20, 8, 8), np.nan, dtype=np.float32)))),
    Case("npy-inf", I(lambda d: npy(d, np.full((20, 8, 8), np.inf)))),
    Case("npy-negative-ints", I(lambda d: npy(d, -uint8s().astype(np.int16) - 1))),
    Case("npy-floats-over-255", I(lambda d: npy(d, uint8s().astype(np.float32) * 10 + 300))),
    Case("npy-1d", I(lambda d: npy(d, np.arange(64, dtype=np.uint8)))),
    Case("npy-2d", I(lambda d: npy(d, np.zeros((8, 8), dtype=np.uint8)))),
    Case("npy-5d", I(lambda d: npy(d, np.zeros((2, 2, 8, 8, 3), dtype=np.uint8)))),
    Case("npy-2-channels", I(lambda d: npy(d, uint8s(20, 8, 8, 2)))),
    Case("npy-0-images", I(lambda d: npy(d, np.zeros((0, 8, 8), dtype=np.uint8)))),
    Case("npy-0-float-images", I(lambda d: npy(d, np.zeros((0, 8, 8), dtype=np.float32)))),
    Case("npy-0x0-images", I(lambda d: npy(d, np.zeros((5, 0, 0), dtype=np.uint8)))),
    Case("npy-huge-header", I(huge_header_npy)),
    Case("npz-over-pixel-limit", I(lambda d: npz(d, images=uint8s(2, 64, 64))),
         env={"FORENSICS_MAX_PIXELS": "100"}),
    Case("npz-over-image-limit", I(lambda d: npz(d, images=uint8s(20))), env={"FORENSICS_MAX_IMAGES": "5"}),
    Case("png-decompression-bomb", I(lambda d: folder(d, {"a.png": png_bytes(60000, 60000, idat=zlib.compress(
        b"\0" * 1000))}))),
    Case("png-0x0", I(lambda d: folder(d, {"a.png": png_bytes(0, 0, idat=zlib.compress(b""))}))),
    Case("empty-folder", I(lambda d: (d / "images").mkdir() or d / "images")),
    Case("folder-of-text", I(lambda d: folder(d, {"a.txt": b"x", "b.csv": b"1,2"}))),
    Case("unsupported-suffix", I(lambda d: raw(d, "x.txt", b"hello"))),
    Case("one-image-not-a-set", I(lambda d: raw(d, "a.png", png_bytes()))),
    Case("folder-named-npz", I(lambda d: (d / "x.npz").mkdir() or d / "x.npz")),
    # -- paths: missing, folders, FIFOs, markup, not UTF-8, too long, links --------------------------
    Case("missing-path", I(lambda d: d / "nope.npz")),
    Case("missing-parent", I(lambda d: d / "no" / "such" / "dir")),
    Case("markup-close-tag-in-path", I(lambda d: d / "a[/x]b.npz")),
    Case("markup-style-in-path", I(lambda d: d / "[red]evidence[/red].npz")),
    Case("markup-in-existing-folder", I(lambda d: folder(d, {"a.png": b""}).rename(d / "[bold]x[red]"))),
    Case("non-utf8-path", I(lambda d: Path(os.fsdecode(os.fsencode(d)) + "/" + NON_UTF8 + ".npz"))),
    Case("non-utf8-corrupt-file", I(lambda d: raw(d, NON_UTF8 + ".npz", b"garbage"))),
    Case("path-too-long", I(lambda d: d / ("a" * 300 + "/") / ("b" * 5000))),
    Case("name-too-long", I(lambda d: d / ("n" * 400 + ".npz"))),
    Case("symlink-loop", I(lambda d: (d / "loop.npz").symlink_to(d / "loop.npz") or d / "loop.npz")),
    Case("dangling-symlink", I(lambda d: (d / "x.npz").symlink_to(d / "gone.npz") or d / "x.npz")),
    Case("device-as-input", I(lambda d: Path("/dev/null"))),
    Case("fifo-as-input", I(fifo), subprocess=True, timeout=30),
    Case("fifo-in-folder", I(lambda d: (d / "images").mkdir() or fifo(d / "images", "a.png").parent),
         subprocess=True, timeout=30),
    # -- names and option values ---------------------------------------------------------------------
    Case("unknown-command", lambda d, w: ["attribut", str(w["query"])]),
    Case("unknown-option", A("--bogus")),
    Case("unknown-option-console-script", A("--bogus"), subprocess=True, timeout=60),  # not typer's usage box
    Case("bad-value-console-script", A("--workers", "-3"), subprocess=True, timeout=60),
    Case("missing-argument", lambda d, w: ["attribute"]),
    Case("unknown-protocol", A("--protocol", "nope")),
    Case("protocol-with-markup", A("--protocol", "[/x]")),
    Case("unknown-matcher", A("--matcher", "nope")),
    Case("matcher-with-markup", A("--matcher", "[red]x")),
    Case("top-zero", A("--top", "0")),
    Case("top-not-a-number", A("--top", "many")),
    Case("workers-negative", A("--workers", "-1")),
    Case("amp-unknown", A("--amp", "fp8")),
    Case("amp-bf16-on-cpu", A("--amp", "bf16")),
    Case("amp-fp16-on-cpu-memorization", lambda d, w: ["memorization", str(w["query"]), "--registry",
                                                       str(w["registry"]), "--amp", "fp16"]),
    Case("device-unknown", A("--device", "nope")),
    Case("device-no-such-gpu", A("--device", "cuda:99")),
    Case("bad-limit-env", A(), env={"FORENSICS_MAX_IMAGES": "lots"}),
    Case("curate-unknown-kind", lambda d, w: ["curate", str(w["query"]), "--kind", "blur", "--out", str(d / "o.npz")]),
    Case("curate-unknown-dataset", lambda d, w: ["curate", "nope:train", "--kind", "copy", "--out", str(d / "o.npz")]),
    Case("curate-count-zero", lambda d, w: ["curate", str(w["query"]), "--kind", "copy", "--count", "0", "--out",
                                            str(d / "o.npz")]),
    Case("curate-count-negative", lambda d, w: ["curate", str(w["query"]), "--kind", "copy", "--count", "-5",
                                                "--out", str(d / "o.npz")]),
    Case("curate-count-over-set", lambda d, w: ["curate", str(w["query"]), "--kind", "copy", "--count", "500",
                                                "--out", str(d / "o.npz")]),
    Case("curate-out-not-npz", lambda d, w: ["curate", str(w["query"]), "--kind", "copy", "--out", str(d / "o.txt")]),
    Case("encoders-unknown", lambda d, w: ["encoders", "no-such-encoder"]),
    Case("show-unknown-generator", lambda d, w: ["registry", "show", "--generator", "nope", "--registry",
                                                 str(w["registry"])]),
    Case("protocol-create-unknown-dataset", lambda d, w: ["protocol", "create", "p2", "--dataset", "nope", "--encoder",
                                                          "vit_tiny_patch16_224.augreg_in21k", "--registry",
                                                          str(w["registry"])]),
    Case("protocol-create-unknown-encoder", lambda d, w: ["protocol", "create", "p2", "--dataset", "digits",
                                                          "--encoder", "nope", "--registry", str(w["registry"])]),
    Case("protocol-option-not-key-value", lambda d, w: ["protocol", "create", "p2", "--dataset", "digits", "--encoder",
                                                        "nope", "--option", "x", "--registry", str(w["registry"])]),
    Case("remove-path-traversal", lambda d, w: ["registry", "remove", "../../x", "--registry", str(w["registry"])]),
    Case("remove-absolute-path", lambda d, w: raw(d, "victim.yaml", b"keep") and [
        "registry", "remove", str(d / "victim"), "--registry", str(w["registry"])]),
    Case("diff-git-option-injection", lambda d, w: raw(d, "victim", b"keep") and [
        "registry", "diff", f"git:--output={d / 'victim'}", "--registry", str(w["registry"])], codes=(1, 2)),
    Case("enroll-bad-name-markup", lambda d, w: ["registry", "enroll", "[/x]", str(w["query"]), "--registry",
                                                 str(w["registry"])]),
    # -- output paths --------------------------------------------------------------------------------
    Case("html-missing-folder", A("--html", "{d}/no/such/report.html")),
    Case("html-is-folder", A("--html", "{d}")),
    Case("html-symlink", lambda d, w: symlinked(d, "r.html") and A("--html", str(d / "r.html"))(d, w)),
    Case("html-fifo", lambda d, w: fifo(d, "r.html") and A("--html", str(d / "r.html"))(d, w)),
    Case("html-name-too-long", A("--html", "{d}/" + "r" * 400 + ".html")),
    Case("curate-out-missing-folder", lambda d, w: ["curate", str(w["query"]), "--kind", "copy", "--out",
                                                    str(d / "no" / "o.npz")]),
    Case("curate-out-symlink", lambda d, w: symlinked(d, "o.npz") and ["curate", str(w["query"]), "--kind", "copy",
                                                                     "--out", str(d / "o.npz")]),
    Case("curate-out-is-folder", lambda d, w: (d / "o.npz").mkdir() or ["curate", str(w["query"]), "--kind", "copy",
                                                                        "--out", str(d / "o.npz")]),
    Case("curate-out-fifo", lambda d, w: fifo(d, "o.npz") and ["curate", str(w["query"]), "--kind", "copy", "--out",
                                                               str(d / "o.npz")]),
    # -- registries: missing, empty, damaged ---------------------------------------------------------
    Case("registry-missing", lambda d, w: ["attribute", str(w["query"]), "--registry", str(d / "none")],
         codes=(1, 2)),
    Case("registry-empty-folder", lambda d, w: (d / "reg").mkdir() or ["attribute", str(w["query"]), "--registry",
                                                                      str(d / "reg")], codes=(1, 2)),
    Case("registry-is-a-file", lambda d, w: raw(d, "reg", b"x") and ["attribute", str(w["query"]), "--registry",
                                                                     str(d / "reg")], codes=(1, 2)),
    Case("registry-yaml-truncated", R(lambda r: truncate_yaml(r / "registry.yaml")), codes=(1,)),
    Case("registry-yaml-empty", R(lambda r: write(r / "registry.yaml", "")), codes=(1,)),
    Case("registry-yaml-not-yaml", R(lambda r: write(r / "registry.yaml", "{{{: [")), codes=(1,)),
    Case("registry-yaml-alias-bomb", R(lambda r: write(r / "registry.yaml", ALIAS_BOMB)), codes=(1,)),
    Case("protocol-yaml-wrong-schema", R(wrong_schema), codes=(1,)),
    Case("protocol-yaml-truncated", R(lambda r: truncate_yaml(r / PROTOCOL / "protocol.yaml")), codes=(1,)),
    Case("protocol-yaml-binary", R(lambda r: write(r / PROTOCOL / "protocol.yaml", os.urandom(300))), codes=(1,)),
    Case("generator-yaml-truncated", R(lambda r: truncate_yaml(generator_file(r))), codes=(1,)),
    Case("generator-yaml-nan-curve", R(nan_curve), codes=(1,)),
    Case("generator-yaml-nan-validate", R(nan_curve, validate=True), codes=(1,)),
    Case("generator-yaml-list", R(lambda r: write(generator_file(r), "- 1\n- 2\n")), codes=(1,)),
    Case("generator-yaml-alias-bomb", R(lambda r: write(generator_file(r), ALIAS_BOMB), validate=True), codes=(1,)),
    Case("generators-folder-symlinked", R(link_generators_elsewhere, validate=True), codes=(1,)),
    Case("generator-file-links-to-dev-zero", R(zero_link, validate=True), codes=(1,), subprocess=True, timeout=60),
    Case("registry-markup-in-name", lambda d, w: (d / "[red]x").mkdir() or ["attribute", str(w["query"]), "--registry",
                                                                           str(d / "[red]x")], codes=(1, 2)),
    # -- signals -------------------------------------------------------------------------------------
    # the test holds the registry's lock, so however fast the machine, the run is still going (embedding, or
    # waiting to write) when the signal comes
    Case("sigint-mid-run", lambda d, w: ["registry", "enroll", "interrupted", str(w["query"]), "--registry",
                                         str(w["registry"])], codes=(130,), subprocess=True, signal_after=6.0,
         timeout=60, hold_lock=True),
]


def _zip_with(name: str, data: bytes) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def _params():
    for case in CASES:
        marks = []
        if case.xfail:
            marks.append(pytest.mark.xfail(strict=False, reason=case.xfail))
        if case.subprocess:
            marks.append(pytest.mark.slow)
        yield pytest.param(case, id=case.id, marks=marks)


def _in_process(argv: list[str], env: dict[str, str], capfd) -> tuple[int, str, str]:
    from forensics.cli.commands import run

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    capfd.readouterr()
    try:
        code = run(argv)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out, err = capfd.readouterr()
    return code, out, err


def _subprocess(argv: list[str], case: Case) -> tuple[int, str, str]:
    def limit_memory():  # a registry file that never ends must not take the machine down with the test
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
        # as a user's shell starts it: pytest-xdist workers ignore SIGINT, and a child would inherit that
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    env = {**os.environ, "FORENSICS_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1", **case.env}
    with contextlib.ExitStack() as held:
        if case.hold_lock:
            from filelock import FileLock

            registry = Path(argv[argv.index("--registry") + 1])
            held.enter_context(FileLock(str(registry / ".lock"), timeout=10))
        proc = subprocess.Popen([FORENSICS, *[os.fsencode(a) for a in argv]], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, preexec_fn=limit_memory)
        if case.signal_after is not None:
            time.sleep(case.signal_after)
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=case.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"`forensics {' '.join(argv[:2])}` still ran after {case.timeout} s (it blocks)")
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input_fails_in_one_line_and_writes_nothing(case: Case, world, tmp_path, capfd):
    d = tmp_path / "case"
    d.mkdir()
    argv = [a.replace("{d}", str(d)) for a in case.build(d, world)]
    before = snapshot(d, world["registry"])
    if case.subprocess:
        code, out, err = _subprocess(argv, case)
    else:
        code, out, err = _in_process(argv, case.env, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    if case.hold_lock:  # a run that reached the write before the signal said, as it should, that it waits for
        # the lock the test holds (on a quick machine it does, on a busy one it is still embedding): not the failure
        lines = [line for line in lines if not (line.startswith("warning: the registry at")
                                                 and "is being written by another process" in line)]
    shown = f"exit {code}; stderr:\n{err[-3000:]}\nstdout:\n{out[-1000:]}"
    assert code in case.codes, shown
    if code == 0:  # a kind that is no longer refused: it must have worked
        json.loads(out) if out.strip().startswith("{") else None
        return
    assert len(lines) == 1, shown
    assert lines[0].startswith("error:") and "Traceback" not in err, shown
    assert "unexpected" not in lines[0], shown  # an expected fault, not an internal error
    assert not out.strip() or isinstance(json.loads(out), dict), shown
    after = snapshot(d, world["registry"])
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))[:6]}\n{shown}"


def test_the_corpus_is_large_enough():
    assert len({c.id for c in CASES}) == len(CASES) >= 60


@pytest.mark.parametrize("name", ["a[/x]b.npz", "[red]evidence[/red].npz", "[bold]b[/bold]"])
def test_markup_in_a_path_is_shown_verbatim(name, world, tmp_path, capfd):
    """Rich markup in a user's path is neither a traceback nor silently dropped: the message names it."""
    code, out, err = _in_process(["attribute", str(tmp_path / name), "--registry", str(world["registry"])], {}, capfd)
    assert code == 2 and err.count("\n") == 1 and name in err, err


def test_usage_errors_are_one_line_with_a_hint(world, capfd):
    code, out, err = _in_process(["attribute", str(world["query"]), "--top", "0"], {}, capfd)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: ") and "--top" in err and "forensics attribute --help" in err, err


def test_amp_is_refused_on_the_cpu_before_any_work(world, capfd):
    start = time.monotonic()
    code, out, err = _in_process(["attribute", str(world["query"]), "--registry", str(world["registry"]),
                                  "--amp", "bf16"], {}, capfd)
    assert code == 2 and "--amp bf16" in err and "CPU" in err and "slower" in err, err
    assert time.monotonic() - start < 5


def test_library_warnings_are_one_line(capfd):
    import warnings

    from forensics.cli.common import STATE, show_warning

    STATE["debug"] = False
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning, saved = show_warning, warnings.showwarning
        try:
            np.array([1.0]) / np.array([0.0])
            warnings.warn("first line\nsecond line\nthird", UserWarning)
        finally:
            warnings.showwarning = saved
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and "divide by zero" in lines[0] and "RuntimeWarning" in lines[0], err
    assert lines[1].startswith("warning: first line") and "second" not in err, err
    assert not lines[1].endswith("(UserWarning)"), err  # a plain warning, as forensics' own are: no kind to name


def test_debug_shows_the_traceback_and_keeps_the_exit_code(world, tmp_path, capfd):
    code, out, err = _in_process(["--debug", "attribute", str(tmp_path / "nope.npz"), "--registry",
                                  str(world["registry"])], {}, capfd)
    assert code == 2 and "Traceback" in err and "UsageError" in err, err
