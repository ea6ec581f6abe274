"""The shipped zoo's figures, read from the bundled registry: what the tests hold to floors, measured.

The unit tests state properties any honest zoo must have (exact copies read as copying, leave-one-out
above a floor, a left-out generator not named wrongly beyond a bound, each held-out set's top candidate
right). This script prints the figures of the zoo shipped today, for the documentation and for a
retrained zoo to be compared against:

- ``enrolled``: instances and generators per protocol;
- ``leave-one-out``: per protocol and matcher, the closed-set right answers and the open-set verdicts
  (right, wrong, unknown);
- ``leave-generator-out``: each generator left out in turn, how many of its runs come back unknown and
  what the others were named;
- ``calibration``: each matcher's recorded open-set thresholds and lookalikes, and whether they are
  current (recomputed from today's enrolled curves);
- ``curves``: per generator, the range of its enrolled curves' values at the first and the deepest
  layer, beside the deepest-layer range of the paper's published curves;
- with ``--curves`` (embeds images, minutes on a CPU): the MNIST ViT's accuracy on P_n, every held-out
  sample set's attribution under each protocol, and the curves of exact and of noisy copies of T.

    .venv/bin/python benchmarks/zoo_figures.py                 # registry figures, about a minute
    .venv/bin/python benchmarks/zoo_figures.py --curves        # and the figures that embed images
    .venv/bin/python benchmarks/zoo_figures.py --json > figures.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROTOCOLS = ("mnist-effnet-lite0", "mnist-vit", "mnist-pixel", "mnist-effnet-vit", "mnist-effnet-vit-pixel")
PAPER = "he2024-cifar10-vitb16"
SAMPLES = ROOT / "registry" / "mnist-effnet-lite0" / "samples"


def enrolled(registry, protocol: str) -> dict[str, Any]:
    refs = registry.enrolled(protocol)
    per: dict[str, int] = defaultdict(int)
    for r in refs:
        per[r.generator] += 1
    return {"instances": len(refs), "generators": dict(sorted(per.items()))}


def leave_one_out_figures(registry, protocol: str, matcher: str) -> dict[str, Any]:
    from forensics.match import leave_one_out

    result = leave_one_out(registry.enrolled(protocol), matcher)
    wrong = [f"{p['generator']}/{p['instance']} -> {p['predicted']}" for p in result.predictions
             if p["predicted"] != p["generator"]]
    return {"correct": result.correct, "n": result.n, "open_set": result.open_set, "closed_set_misses": wrong}


def leave_generator_out_figures(registry, protocol: str, matcher: str) -> dict[str, Any]:
    from forensics.match import leave_generator_out

    result = leave_generator_out(registry.enrolled(protocol), matcher)
    named = {g: p["attributed_to"] for g, p in result["per_generator"].items() if p.get("attributed_to")}
    return {"unknown": result["unknown"], "n": result["n"], "named": named}


def calibration_figures(registry, protocol: str, matcher: str) -> dict[str, Any]:
    from forensics.match import make_matcher

    recorded = registry.calibration(protocol, matcher)
    fitted = make_matcher(matcher, calibration=recorded).fit(registry.enrolled(protocol))
    keys = ("distance_ratio", "score", "margin", "balanced_accuracy", "lookalikes")
    return {"source": fitted.calibration["source"], **{k: fitted.calibration.get(k) for k in keys}}


def curve_figures(registry, protocol: str) -> dict[str, Any]:
    per: dict[str, list[np.ndarray]] = defaultdict(list)
    for r in registry.enrolled(protocol):
        per[r.generator].append(np.array(r.fingerprint.values, dtype=float))
    out: dict[str, Any] = {}
    for g, curves in sorted(per.items()):
        values = np.stack(curves)
        out[g] = {"first_layer": [round(values[:, 0].min(), 2), round(values[:, 0].max(), 2)],
                  "deepest_layer": [round(values[:, -1].min(), 2), round(values[:, -1].max(), 2)]}
    paper = [r.fingerprint.values[-1] for r in registry.enrolled(PAPER)]
    out[f"paper ({PAPER})"] = {"deepest_layer": [round(min(paper), 2), round(max(paper), 2)]}
    return out


def vit_accuracy() -> dict[str, Any]:
    from forensics.zoo import encoder
    from forensics.zoo.data import mnist_split

    record = json.loads((Path(encoder.weights_path()).parent / encoder.RECORD_FILE).read_text())
    _, _, test_x, test_y = mnist_split()
    measured = float((encoder.predict(encoder.load_classifier(), test_x) == test_y).mean())
    return {"recorded": record["test_accuracy"], "measured": round(measured, 4)}


def embedded_figures(registry, protocols: list[str]) -> dict[str, Any]:
    """Held-out sets' attributions and the curves of exact and noisy copies of T, under each protocol."""
    from forensics.curation import curate, pick
    from forensics.engine import load_reference_set, make_engine
    from forensics.match import make_matcher
    from forensics.zoo.catalog import HELDOUT_INSTANCE, read_manifest

    heldout = {z.generator: z.path for z in read_manifest(SAMPLES) if z.instance == HELDOUT_INSTANCE}
    out: dict[str, Any] = {}
    for protocol in protocols:
        proto = registry.protocol(protocol)
        engine = make_engine(proto, reference_dir=registry.reference_dir, use_cache=False)
        matcher = make_matcher("alpha", calibration=registry.calibration(protocol, "alpha"))
        matcher.fit(registry.enrolled(protocol))
        train = load_reference_set(proto.parts[0].train)
        copies = train[pick(len(train), proto.batch_size, seed=0)]
        sets = {f"heldout {g}": np.load(path)["images"] for g, path in sorted(heldout.items())}
        sets["exact copies of T"] = copies
        sets["noisy copies of T (sigma 25)"] = curate(copies, "noise", seed=0)
        rows = {}
        for name, images in sets.items():
            curve = engine.curves(images)[0]
            result = matcher.attribute(curve.fingerprint.vector())
            values = [v for v in curve.fingerprint.values if v is not None]
            rows[name] = {"verdict": result.verdict, "family": result.family, "top": [c.generator for c in result.candidates[:2]],
                          "score": round(result.candidates[0].score, 3), "margin": round(result.margin, 3),
                          "distance_ratio": None if result.distance_ratio is None else round(result.distance_ratio, 2),
                          "curve": [round(min(values), 2), round(max(values), 2)],
                          "readings": sorted({layer.reading for layer in curve.layers})}
        out[protocol] = rows
    return out


def collect(args) -> dict[str, Any]:
    from forensics.match import available_matchers
    from forensics.registry import Registry

    registry = Registry.open(ROOT / "registry")
    protocols = args.protocol or list(PROTOCOLS)
    matchers = args.matcher or list(available_matchers())
    figures: dict[str, Any] = {"enrolled": {p: enrolled(registry, p) for p in protocols}}
    figures["leave-one-out"] = {p: {m: leave_one_out_figures(registry, p, m) for m in matchers} for p in protocols}
    figures["leave-generator-out"] = {p: {m: leave_generator_out_figures(registry, p, m) for m in matchers}
                                      for p in protocols}
    figures["calibration"] = {p: {m: calibration_figures(registry, p, m) for m in matchers} for p in protocols}
    figures["curves"] = {p: curve_figures(registry, p) for p in protocols if len(registry.protocol(p).parts) == 1}
    if args.curves:
        figures["vit accuracy on P_n"] = vit_accuracy()
        figures["embedded"] = embedded_figures(registry, protocols)
    return figures


def render(figures: dict[str, Any]) -> str:
    lines = []
    for section, body in figures.items():
        lines.append(f"## {section}")
        if isinstance(body, dict) and all(isinstance(v, dict) for v in body.values()):
            for key, value in body.items():
                lines.append(f"{key}:")
                for k, v in value.items():
                    lines.append(f"  {k}: {json.dumps(v)}")
        else:
            lines.append(json.dumps(body))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", action="append", help=f"a protocol (repeatable; default {', '.join(PROTOCOLS)})")
    parser.add_argument("--matcher", action="append", help="a matcher (repeatable; default every matcher)")
    parser.add_argument("--curves", action="store_true", help="also the figures that embed images (minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from forensics import plugins

    plugins.reset(plugins.PluginHost(autoload=False))  # the bundled plugins only, as the figures were made
    figures = collect(args)
    print(json.dumps(figures, indent=1) if args.json else render(figures))


if __name__ == "__main__":
    main()
