"""The figures docs/robustness.md and the README quote, from one or more ``robust_attribution.py --json`` files.

    python benchmarks/robust_summary.py out-a.json [out-b.json …] [--operating-point balanced]

Prints, for the query sets (not the curated copies) grouped by batch size (100; 200–500, the measured sizes;
150, 250 and 400, the sizes between; 1,000) and by kind of condition (as generated and JPEG; resized or
cropped; WebP; folders half re-encoded): right · family · unknown · wrong, then how often a batch whose own
generator was left out of the references was named as another generator; the curated copies named; and the
issue's targets per condition — held-out sets (``heldout``) named right at m′ ≥ 200 and never wrong, and at m′
= 100 how many of the 9 are named (right or as their family in at least 2 of their batches) and none wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

JPEG = ("none", "png", "jpeg95", "jpeg90", "jpeg85", "jpeg75")
SIZES = {"100": (100,), "200–500": (200, 300, 500), "150, 250, 400": (150, 250, 400), "1000": (1000,)}


def _kind(condition: str) -> str:
    """The group a condition of ``robust_attribution.py`` is counted in."""
    if condition in JPEG:
        return "none and JPEG"
    if condition.startswith("webp"):
        return "WebP"
    if condition.startswith("half-"):
        return "half re-encoded"
    return "resized or cropped"


def summary(rows: list[dict], point: str) -> None:
    rows = [r for r in rows if r["operating_point"] == point]
    groups: dict[tuple[str, str], Counter] = defaultdict(Counter)
    curated: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in rows:
        kind = _kind(r["condition"])
        for label, sizes in SIZES.items():
            if r["size"] in sizes:
                if r["generator"].startswith("curated-"):
                    curated[(label, kind)][r["outcome"] != "unknown"] += 1
                else:
                    c = groups[(label, kind)]
                    c[r["outcome"]] += 1
                    c["left out named"] += r["left_out_outcome"] == "wrong"
    print(f"operating point {point}: right · family · unknown · wrong; own generator left out, named as another")
    for (label, kind), c in sorted(groups.items(), key=lambda kv: (list(SIZES).index(kv[0][0]), kv[0][1])):
        n = c["right"] + c["family"] + c["unknown"] + c["wrong"]
        cur = curated.get((label, kind), Counter())
        print(f"  m′ {label:14s} {kind:19s} ({n:4d} batches): {c['right']} · {c['family']} · {c['unknown']} · "
              f"{c['wrong']}; {c['left out named']}   curated copies named {cur[True]} of {cur[True] + cur[False]}")
    wrong = [r for r in rows if r["outcome"] == "wrong" and not r["generator"].startswith("curated-")]
    print(f"  wrong answers ({len(wrong)}): " + ", ".join(
        f"{r['set']} {r['condition']} m′={r['size']} → {r['verdict'] or '[' + str(r['family']) + ']'}" for r in wrong))
    named = [r for r in rows if r["outcome"] != "unknown" and r["generator"].startswith("curated-")]
    print(f"  curated copies named ({len(named)}): " + ", ".join(
        f"{r['generator']} {r['condition']} m′={r['size']} → {r['verdict'] or '[' + str(r['family']) + ']'}"
        for r in named))
    by_condition(rows)
    print("  held-out sets: at m′ ≥ 200 (every size) right of batches (wrong); at m′ = 100 sets named of 9 "
          "(batches wrong)")
    for condition in dict.fromkeys(r["condition"] for r in rows):
        held = [r for r in rows if r["set"] == "heldout" and r["condition"] == condition]
        big = [r for r in held if r["size"] >= 200]
        small = [r for r in held if r["size"] == 100]
        named = Counter(r["generator"] for r in small if r["outcome"] in ("right", "family"))
        print(f"    {condition:10s} m′ ≥ 200: {sum(r['outcome'] == 'right' for r in big)} of {len(big)} right "
              f"({sum(r['outcome'] == 'wrong' for r in big)} wrong); m′ = 100: "
              f"{sum(k >= 2 for k in named.values())} of 9 named ({sum(r['outcome'] == 'wrong' for r in small)} wrong)")


def by_condition(rows: list[dict]) -> None:
    """The table by condition (markdown): right · family · unknown · wrong per group of sizes, how often a batch
    whose own generator was left out was named as another (every size), the curated copies named."""
    print("| condition (read as) | " + " | ".join(f"m′ = {label}" for label in SIZES)
          + " | own generator left out, named as another | curated copies named |")
    print("|---" * (len(SIZES) + 3) + "|")
    for condition in dict.fromkeys(r["condition"] for r in rows):
        mine = [r for r in rows if r["condition"] == condition]
        sets = [r for r in mine if not r["generator"].startswith("curated-")]
        cells = []
        for sizes in SIZES.values():
            c = Counter(r["outcome"] for r in sets if r["size"] in sizes)
            cells.append(f"{c['right']} · {c['family']} · {c['unknown']} · {c['wrong']}")
        curated = [r for r in mine if r["generator"].startswith("curated-")]
        print(f"| {condition} | " + " | ".join(cells)
              + f" | {sum(r['left_out_outcome'] == 'wrong' for r in sets)} of {len(sets)}"
              + f" | {sum(r['outcome'] != 'unknown' for r in curated)} of {len(curated)} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", type=Path)
    ap.add_argument("--operating-point", default="balanced")
    ap.add_argument("--only", default=None, help="comma-separated set names (e.g. heldout): only these sets")
    a = ap.parse_args()
    rows = [r for path in a.json for r in json.loads(path.read_text())["rows"]]
    if a.only:
        keep = set(a.only.split(","))
        rows = [r for r in rows if r["set"] in keep or r["generator"].startswith("curated-")]
    summary(rows, a.operating_point)
    return 0


if __name__ == "__main__":
    sys.exit(main())
