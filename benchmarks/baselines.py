"""Benchmark: the curve matchers beside the paper's baselines (issue 25), on the paper's curves and the zoo.

He et al. 2024 claim about 30 % better identification than baselines. This runs, for each protocol::

    forensics registry evaluate --json --protocol P --matcher alpha --matcher cosine --matcher svm \\
        --matcher last-layer --matcher best-layer --matcher fid

and prints one row per matcher: leave-one-out accuracy (closed set: the top candidate, as the paper
counts), the paper's hold-out split where the protocol has one (``full``: 2 references + 1 query per
generator; ``small``: 1 + 1, computed here from the same registry), the open-set verdicts of the
leave-one-out queries (right / wrong / unknown) and how many runs of a generator left out entirely came
back "unknown". ``last-layer`` and ``best-layer`` are one-layer C_T fingerprints; ``fid`` is the FID of
the set (the paper's) or ``fd_pca`` (the zoo's pixel-PCA Fréchet distance); see
``forensics/match/baselines.py``. The gain is each curve matcher's figure minus the best baseline's.

    python benchmarks/baselines.py                    # the paper's protocol and the default (zoo) one
    python benchmarks/baselines.py --protocol mnist-vit --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CURVE = ("alpha", "cosine", "svm")
BASELINES = ("last-layer", "best-layer", "fid")
PAPER = "he2024-cifar10-vitb16"


def evaluate(protocol: str, matchers: tuple[str, ...]) -> dict:
    """The ``registry evaluate --json`` document of one protocol (the CLI, as a user runs it)."""
    exe = Path(sys.executable).parent / "forensics"
    cmd = [str(exe) if exe.is_file() else "forensics", "registry", "evaluate", "--json", "--protocol", protocol]
    for m in matchers:
        cmd += ["--matcher", m]
    print("$ forensics " + " ".join(cmd[1:]), file=sys.stderr)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["protocols"][0]


def small_split(matcher: str) -> tuple[int, int] | None:
    """(right, queries) of the paper's "small" split (1 reference + 1 query per generator), closed set."""
    from forensics.match import holdout
    from forensics.registry import Registry
    from forensics.registry.papercurves import paper_split

    refs = Registry.open().enrolled(PAPER)
    train, queries = paper_split(refs, "small")
    if not train or not queries:
        return None
    picked = {id(r) for r in train + queries}
    query_ids = {id(r) for r in queries}
    res = holdout([r for r in refs if id(r) in picked], matcher, is_query=lambda r: id(r) in query_ids)
    return res["correct"], res["n"]


def rows(doc: dict, paper: bool) -> list[dict]:
    out = []
    for m in doc["matchers"]:
        row = {"matcher": m["matcher"], "error": m.get("error"), "loo": (m["correct"], m["n"]),
               "open_set": m.get("open_set"), "lgo": None, "full": None, "small": None}
        lgo = m.get("leave_generator_out") or {}
        if lgo.get("n"):
            row["lgo"] = (lgo["unknown"], lgo["n"])
        split = m.get("split") or {}
        if split.get("n"):
            row["full"] = (split["correct"], split["n"])
        if paper and not m.get("error"):
            row["small"] = small_split(m["matcher"])
        out.append(row)
    return out


def frac(x: tuple[int, int] | None) -> str:
    return "—" if x is None else f"{x[0]}/{x[1]} ({100 * x[0] / x[1]:.0f} %)"


def table(protocol: str, found: list[dict]) -> str:
    lines = [f"## {protocol}", "",
             "| matcher | kind | LOO (closed set) | hold-out full | hold-out small | open set right / wrong / unknown "
             "| left-out generator unknown |", "|---|---|---|---|---|---|---|"]
    for r in found:
        kind = "baseline" if r["matcher"] in BASELINES else "curve"
        if r["error"]:
            lines.append(f"| {r['matcher']} | {kind} | error: {r['error']} | | | | |")
            continue
        o = r["open_set"] or {}
        osr = f"{o.get('answered_right', '—')} / {o.get('answered_wrong', '—')} / {o.get('unknown', '—')}"
        lines.append(f"| {r['matcher']} | {kind} | {frac(r['loo'])} | {frac(r['full'])} | {frac(r['small'])} | "
                     f"{osr} | {frac(r['lgo'])} |")
    ok = [r for r in found if not r["error"]]
    best_base = max((r["loo"][0] / r["loo"][1] for r in ok if r["matcher"] in BASELINES), default=None)
    if best_base is not None:
        gains = [f"{r['matcher']} {100 * (r['loo'][0] / r['loo'][1] - best_base):+.0f} points"
                 for r in ok if r["matcher"] in CURVE]
        lines += ["", f"LOO gain over the best baseline ({100 * best_base:.0f} %): " + ", ".join(gains)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", action="append", help="protocols (default: the paper's and the default one)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    from forensics.registry import Registry

    protocols = args.protocol or [PAPER, Registry.open().default_protocol]
    result = {}
    for p in protocols:
        found = rows(evaluate(p, CURVE + BASELINES), paper=p == PAPER)
        result[p] = found
        print(table(p, found) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
