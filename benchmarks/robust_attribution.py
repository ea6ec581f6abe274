"""Attribution under real evidence (issue 25): batch sizes m′ and post-processing, on new query sets.

Query sets. For every zoo generator its shipped ``heldout`` set (seed 3, never enrolled), and **new** ones
the references and thresholds never saw (``--build``): the diffusion network with DDPM (ancestral), DDIM and
PNDM under sampling seed 4, the Gaussian mixture and the copier under seed 4, and new training runs of the VAE,
DCGAN, SNGAN and PixelCNN under training seed 4 (checkpoints in ``$FORENSICS_ZOO_CKPT``, default ``/tmp/zoo``:
an interrupted build resumes), 1,000 images each (so that m′ = 1,000 exists); ``--build --seed 5`` draws another
such family of sets. They are written to ``--sets`` (default ``~/.cache/forensics/robust-sets``) with the command
and seed in a json beside each; every set there is queried but those an enrolled run drew (the seed-4
DCGAN and SNGAN runs are enrolled, as ``run4``, so their sets leave the query side).

Curated copies of T (``--curated``, 500 of each kind by default: rotated, noisy, downsampled, shuffled,
background-swapped and exact copies) are queries no enrolled generator made: they must come back "unknown"
under every condition.

Conditions: ``none``; ``png`` (each image written as a PNG file and read back through a folder: must
change nothing); ``jpeg95``/``jpeg90``/``jpeg85``/``jpeg75`` (JPEG files in a folder: the condition is *read
from the files*); ``resize2``/``resize0.5``/``crop90`` (declared with ``condition=``, as ``--condition`` does).
Files that carry the first half of a resampling only, written as PNG at the size it leaves, so that the
condition is *read from their size* (not in the default list): ``up2`` (resized ×2, bicubic), ``up2-lanczos``,
``down2`` (×0.5, bicubic), ``down2-box`` (×0.5 by averaging, as an area filter does), ``cut90`` (a centred
crop of 90 % of each side, not resized), each also as a JPEG or WebP file at that size (``up2+jpeg90``,
``down2+jpeg75``, ``cut90+webp80``: resized, then re-encoded, as a platform does); and lossy WebP files, ``webp90`` … ``webp75`` (their quality read by
re-encoding them; ``--webp-as-generated`` declares them ``none`` instead, as the tool matched them before
WebP conditions were kept); and folders processed in two ways, ``half-jpeg90`` (every other image a JPEG 90
file, the rest PNG; any encoding or one-way resampling after ``half-``: ``half-down2``, ``half-up2+jpeg75``):
each image read as its own, the batch matched against
references processed in its proportions (``--as-most-common``: every image as the most common condition,
with a warning, as the tool matched them before, and images of several sizes brought to one by the
protocol's resize).
Batch sizes m′ = 100, 200, 300, 500 (disjoint sub-batches of a set, up to ``--batches`` each) and 1,000
(the whole 1,000-image sets: two batches of 500, verdict on their mean).

For every query batch: the verdict against all enrolled generators (right; family: its generator's
family named, not the generator; unknown; wrong), and the verdict with its own generator left out of the
references (must be "unknown", or its family when other generators of the family stay enrolled; the
thresholds are recalibrated without it — where the registry answers with pooled thresholds, pooled again
over the same cells each fitted without it and adopted or not by the same check, as a registry that never
enrolled it would record them). Then leave-one-out on the enrolled instances at every (condition, m′), as
``forensics registry evaluate --batch-size m′ --condition c`` computes it. Everything goes through ``forensics.attribute``'s own pieces (the engine, the
records, ``_Matchers``), so the figures are the tool's.

With ``--operating-points balanced,named,cautious`` every batch is answered at each operating point
(:data:`forensics.match.calibration.OPERATING_POINTS`) from the same calibrations, one table per point.

    nice python benchmarks/robust_attribution.py --build                 # draw the new sets (~5 min)
    nice python benchmarks/robust_attribution.py --json out.json         # the table (~30 min here)

``--records-cache DIR`` keeps each set's per-image records under each condition (keyed by the images, the
condition, the protocol, the tool's version and the codecs; ``pooled_thresholds.py`` shares them) and reads
them back on the next run: measuring another matching rule then re-embeds nothing (a vae set under two
conditions: 31 s, then 6 s, the same verdicts).

Threads: torch and BLAS on one thread (FORENSICS_THREADS=1, set before torch starts), so that a busy
machine does not turn the embedding into spin-waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("FORENSICS_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = (100, 200, 300, 500, 1000)
CONDITIONS = ("none", "png", "jpeg95", "jpeg90", "jpeg85", "jpeg75", "resize2", "resize0.5", "crop90")
NEW = ("ddpm", "ddim", "pndm", "gmm", "kde-copier", "vae", "dcgan", "sngan", "pixelcnn")
NEW_SEED = 4  # seeds 0–2: every generator's enrolled runs (a set drawn by one is left out); 3: the held-out sets


def default_sets() -> Path:
    from forensics.encode.cache import cache_dir

    return cache_dir() / "robust-sets"


def build(out: Path, n: int = 1000, only: set[str] | None = None, seed: int = NEW_SEED) -> None:
    """Draw the new query sets of training or sampling seed ``seed`` into ``out`` (only those named
    ``<generator>-seed<seed>`` in ``only``, when given: two builds side by side each take their own)."""
    import torch

    from forensics.zoo.training import generators as G

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(os.environ.get("FORENSICS_ZOO_CKPT", "/tmp/zoo"))
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for gen in NEW:
        path = out / f"{gen}-seed{seed}.npz"
        if path.is_file() or (only is not None and path.stem not in only):
            continue
        t = time.time()
        if gen in ("ddpm", "ddim", "pndm"):
            net, sched = G.load_ddpm()
            images = G.sample_diffusion(net, sched, gen, seed, n=n)
        else:  # a new training run (resumable from its checkpoints), or a new fit
            G.M_IMAGES = n  # the generators draw M_IMAGES samples
            train = {"gmm": G.train_gmm, "kde-copier": G.train_kde_copier, "vae": G.train_vae,
                     "dcgan": G.train_dcgan, "sngan": G.train_sngan, "pixelcnn": G.train_pixelcnn}[gen]
            images, _ = train(seed, ckpt_dir, G.SETTINGS[gen])
        np.savez(path, images=images)
        meta = {"generator": gen, "seed": seed, "n": int(len(images)), "seconds": round(time.time() - t, 1),
                "made_by": f"python benchmarks/robust_attribution.py --build --seed {seed} (forensics.zoo.training.generators, "
                           f"settings {gen}, seed {seed})"}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"built {path.name}: {len(images)} images in {meta['seconds']} s", file=sys.stderr, flush=True)


def query_sets(sets: Path, curated: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """(generator, set name, images) for every heldout set and every new set found; with ``curated``,
    also that many images of each curated copy kind of T (``curated-<kind>``: must come back unknown). A
    set drawn by a run the zoo enrols (its generator and seed those of a ``run<seed>``: the same training
    run, or the same sampling stream) is no query: it is left out, with a note."""
    from forensics import api
    from forensics.curation import KINDS, curate
    from forensics.zoo.catalog import is_reference, read_manifest
    from forensics.zoo.data import mnist_split

    reg = api.open_registry()
    samples = reg.reference_dir("mnist-effnet-lite0").parent / "samples"
    enrolled = {(z.generator, z.seed) for z in read_manifest(samples) if is_reference(z.instance)}
    found = []
    if curated:
        train = mnist_split()[0]
        pick = np.random.default_rng(7).choice(len(train), curated, replace=False)
        found += [(f"curated-{k}", "seed7", curate(train[pick], k, seed=7)) for k in KINDS]
    for gen in sorted(p.name for p in samples.iterdir() if p.is_dir()):
        found.append((gen, "heldout", np.load(samples / gen / "heldout.npz")["images"]))
    for path in sorted(sets.glob("*.npz")):
        named = re.fullmatch(r"(.+)-seed(\d+)", path.stem)
        if named is None:
            raise SystemExit(f"{path}: a query set's file is named <generator>-seed<N>.npz (what --build writes), "
                             "so that its generator is known and a set drawn by an enrolled run is left out; rename it")
        gen, seed = named[1], named[2]
        if (gen, int(seed)) in enrolled:
            print(f"left out {path.name}: drawn by {gen}'s enrolled run{seed}", file=sys.stderr, flush=True)
            continue
        found.append((gen, path.stem, np.load(path)["images"]))
    return found


#: the conditions of files whose size or format says what happened to them: how each image is written
#: (one way: the tool brings it back), and the registry condition it is read as
FILES = {
    "up2": (lambda im, Image: im.resize((2 * im.width, 2 * im.height), Image.BICUBIC), "resize2"),
    "up2-lanczos": (lambda im, Image: im.resize((2 * im.width, 2 * im.height), Image.LANCZOS), "resize2"),
    "down2": (lambda im, Image: im.resize((im.width // 2, im.height // 2), Image.BICUBIC), "resize0.5"),
    "down2-box": (lambda im, Image: im.resize((im.width // 2, im.height // 2), Image.BOX), "resize0.5"),
    "cut90": (lambda im, Image: im.crop(_centre(im, 0.9)), "crop90"),
}


def _centre(im, share: float) -> tuple[int, int, int, int]:
    from forensics.conditions import scaled

    cw, ch = scaled(im.size, share)
    left, top = (im.width - cw) // 2, (im.height - ch) // 2
    return left, top, left + cw, top + ch


def read_as(condition: str) -> str:
    """The registry condition a benchmark condition is matched under."""
    if condition == "png":
        return "none"
    shape, _, encoding = condition.partition("+")
    if shape in FILES:
        return FILES[shape][1] + (f"+{encoding}" if encoding else "")
    return condition


def _saved(im, folder: Path, i: int, encoding: str) -> None:
    """One image written to ``folder`` as ``encoding`` says: jpegQ, webpQ, else PNG."""
    if encoding.startswith("jpeg"):
        im.save(folder / f"{i:05d}.jpg", quality=int(encoding[4:]))
    elif encoding.startswith("webp"):
        im.save(folder / f"{i:05d}.webp", quality=int(encoding[4:]))
    else:
        im.save(folder / f"{i:05d}.png")


def as_query(images: np.ndarray, condition: str, folder: Path, webp_as_generated: bool = False):
    """(what attribute reads, the condition to declare): files in a folder for png/jpeg/webp and the
    one-way resampled sizes, else the array put through the condition, declared."""
    from PIL import Image

    from forensics.conditions import get_condition

    if condition.startswith("half-"):  # every other image processed (a one-way resampling, a re-encoding), the
        folder.mkdir(parents=True, exist_ok=True)  # rest PNG as generated
        shape, _, encoding = condition[5:].partition("+")
        if shape not in FILES:
            shape, encoding = "", condition[5:]
        for i, im in enumerate(images):
            im = Image.fromarray(im)
            if i % 2:
                _saved(FILES[shape][0](im, Image) if shape else im, folder, i, encoding or "png")
            else:
                _saved(im, folder, i, "png")
        return str(folder), "auto"
    shape, _, encoding = condition.partition("+")
    if condition == "png" or condition.startswith(("jpeg", "webp")) or shape in FILES:
        folder.mkdir(parents=True, exist_ok=True)
        encoding = encoding if shape in FILES else condition
        for i, im in enumerate(images):
            im = Image.fromarray(im)
            _saved(FILES[shape][0](im, Image) if shape in FILES else im, folder, i, encoding)
        return str(folder), "none" if webp_as_generated and encoding.startswith("webp") else "auto"
    return get_condition(condition).apply(images), condition


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="store_true", help="draw the new query sets, then stop")
    ap.add_argument("--seed", type=int, default=NEW_SEED,
                    help=f"with --build: the training or sampling seed of the new sets (default {NEW_SEED})")
    ap.add_argument("--sets", type=Path, default=None)
    ap.add_argument("--batches", type=int, default=3, help="disjoint sub-batches per set and size (default 3)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--matcher", default="alpha")
    ap.add_argument("--curated", type=int, default=500, help="images of each curated copy kind (0: none)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default=None, help="comma-separated set names (e.g. vae-seed4): only these sets")
    ap.add_argument("--skip-loo", action="store_true", help="leave out the leave-one-out table")
    ap.add_argument("--no-resampling", action="store_true",
                    help="answer without the resampling rule (forensics.match.resampling), for a comparison")
    ap.add_argument("--webp-as-generated", action="store_true",
                    help="declare lossy WebP files as generated (condition none) instead of reading their quality")
    ap.add_argument("--as-most-common", action="store_true",
                    help="match files processed in several ways all as the most common condition (the tool before "
                         "mixtures)")
    ap.add_argument("--records-cache", type=Path, default=None,
                    help="keep each set's per-image records under each condition here and read them back on the "
                         "next run (default: none kept)")
    ap.add_argument("--operating-points", default="balanced",
                    help="comma-separated operating points to answer at (balanced, named, cautious): every batch "
                         "is answered at each, from the same calibrations")
    a = ap.parse_args()
    sets = a.sets or default_sets()
    if a.build:
        build(sets, only=None if a.only is None else set(a.only.split(",")), seed=a.seed)
        return 0

    from forensics import api
    from forensics.conditions import mixture_name, scaled_mixture
    from forensics.match import make_matcher
    from forensics.match.batchsize import layer_weights
    from forensics.match.calibration import check_operating_point

    proto, refs, engine, matchers = default_matching(a.matcher)
    generators = sorted({r.generator for r in refs})
    families = {r.generator: r.family for r in refs if r.family}
    loo: dict[tuple, dict[str, object]] = {}
    pooled_without: dict[str, object] = {}

    def pool_without(g: str):
        """The pooled thresholds a registry that never enrolled ``g`` would record and answer with
        (``registry calibrate``'s cells, every one fitted without it, adopted or not by the same check on its
        runs), when the registry answers with a pool; None otherwise (each cell its own thresholds)."""
        if matchers.pooled is None:
            return None
        if g not in pooled_without:
            pools = api._pools(matchers, [a.matcher], conditions=matchers.pooled["conditions"],
                               sizes=matchers.pooled["sizes"], without=g)
            found = api._pool_record([r for r in refs if r.generator != g], pools.get(a.matcher))
            pooled_without[g] = found if found is not None and found["adopted"] else None
            print(f"pooled thresholds without {g}: {found and {k: found[k] for k in ('adopted', 'operating_points')}}",
                  file=sys.stderr, flush=True)
        return pooled_without[g]

    def fitted(condition, size: int):
        """The matcher at (condition: a name or a mixture, size) for all references, and one per generator
        left out."""
        key = (condition, size)
        if key not in loo:
            full, at = matchers.at(condition, size)
            if at is None:
                raise SystemExit(f"the registry keeps no records under {condition}: run the backfill first")
            if condition == "none" and size == proto.batch_size:
                redrawn_refs, queries = refs, None
            else:
                redrawn = matchers.redraw(condition, size)
                redrawn_refs, queries = list(redrawn.references), redrawn.queries
            def without(g: str):
                # the generator left out entirely: not in the references, the thresholds nor the layer weights
                rest = [r for r in redrawn_refs if r.generator != g]
                if queries is None:
                    fit = make_matcher(a.matcher).fit(rest)
                else:
                    fit = api._weighted_matcher(a.matcher, layer_weights(rest, queries)).fit(rest, queries)
                pooled = pool_without(g)
                return fit if pooled is None else fit.with_pooled_thresholds(pooled)
            loo[key] = _Fitted(without, all=full)
        return loo[key]

    points = a.operating_points.split(",")
    for point in points:
        check_operating_point(point)
    at_point: dict[tuple, object] = {}

    def answering(condition: str, size: int, who: str, point: str):
        """The matcher of ``who`` ("all", or the generator left out) at (condition, size), at ``point``."""
        key = (condition, size, who, point)
        if key not in at_point:
            at_point[key] = fitted(condition, size)[who].at_operating_point(point)
        return at_point[key]

    rows = []
    conditions = a.conditions.split(",")
    sizes = [int(s) for s in a.sizes.split(",")]
    t0 = time.time()
    m = proto.batch_size
    only = set(a.only.split(",")) if a.only else None
    for gen, name, images in query_sets(sets, curated=a.curated):
        if only is not None and name not in only:
            continue
        for condition in conditions:
            cond, kept, scorer = query_records(images, condition, proto, engine, matchers, a.records_cache,
                                       webp_as_generated=a.webp_as_generated, as_most_common=a.as_most_common)
            for size in sizes:
                if size > len(images):
                    continue
                n_batches = 1 if size >= m else min(a.batches, len(images) // size)
                for b in range(n_batches):
                    start = b * size
                    parts = [np.arange(start + s, start + min(s + m, size)) for s in range(0, size, m)]
                    curves = scorer.curves_from_records(kept, parts)
                    vec = api.mean_curve(curves, proto).fingerprint.vector()
                    drawn = (None if a.no_resampling  # as attribute resamples the set
                             else api.resample_vectors(scorer, kept, parts).mean(axis=1))
                    under = cond.of(slice(start, start + size))  # as attribute matches it (a mean: scaled to m)
                    under = under if isinstance(under, str) else scaled_mixture(under, min(size, m))
                    for point in points:
                        mine = answering(under, min(size, m), "all", point)
                        answer = api._resampled(mine.attribute(vec), mine, drawn)
                        theirs = answering(under, min(size, m), gen, point) if gen in generators else None
                        left = answer if theirs is None else api._resampled(theirs.attribute(vec), theirs, drawn)
                        if cond.withhold is not None:  # as attribute answers: no generator named
                            answer, left = answer.withheld(cond.withhold), left.withheld(cond.withhold)
                        outcome = _outcome(answer, gen, families)
                        read = under if isinstance(under, str) else mixture_name(under)
                        rows.append({"generator": gen, "set": name, "condition": condition, "read_as": read,
                                     "warning": cond.warning,
                                     "size": size, "batch": b, "operating_point": point, "verdict": answer.verdict,
                                     "family": answer.family, "outcome": outcome, "left_out_verdict": left.verdict,
                                     "left_out_family": left.family, "left_out_outcome": _outcome(left, gen, families),
                                     "reason": answer.reason, "ranked": [c.generator for c in answer.candidates[:3]],
                                     "left_out_reason": left.reason})
                        print(f"{gen:16s} {name:14s} {condition:9s}→{read:9s} m'={size:4d} #{b} {point:8s}: "
                              f"{_shown(answer):10s} ({outcome}); left out: {_shown(left)}"
                              f"   [{time.time() - t0:.0f} s]", file=sys.stderr, flush=True)
    for point in points:
        table = defaultdict(Counter)
        for r in rows:
            if r["operating_point"] != point:
                continue
            key = (r["condition"], r["size"], r["generator"].startswith("curated-"))
            table[key][r["outcome"]] += 1
            table[key]["left_out_" + r["left_out_outcome"]] += 1
        print(f"\noperating point {point}:\n| condition | m′ | batches | right | family | unknown | wrong | own "
              "generator left out → unknown (+ its family) |")
        print("|---|---|---|---|---|---|---|---|")
        for (c, size, cur), cnt in sorted(table.items(),
                                          key=lambda kv: (kv[0][2], conditions.index(kv[0][0]), kv[0][1])):
            n = cnt["right"] + cnt["family"] + cnt["unknown"] + cnt["wrong"]
            if cur:
                print(f"| {c} (curated copies) | {size} | {n} | — | — | {cnt['unknown']} | {cnt['wrong']} | — |")
            else:
                print(f"| {c} | {size} | {n} | {cnt['right']} | {cnt['family']} | {cnt['unknown']} | "
                      f"{cnt['wrong']} | {cnt['left_out_unknown']} (+ {cnt['left_out_family']}) of {n} |")
    # leave-one-out on the enrolled instances themselves, at every (condition, m′): `registry evaluate
    # --batch-size m′ --condition c` (png is none to the registry: PNG changes no pixel), its pool of
    # calibration points built once for every cell rather than once per call
    pool = None
    if matchers.pooled is not None and not a.skip_loo:
        pool = api._pools(matchers, [a.matcher], conditions=matchers.pooled["conditions"],
                          sizes=matchers.pooled["sizes"]).get(a.matcher)

    def evaluated(condition: str, size: int, point: str) -> dict:
        """What `forensics registry evaluate --batch-size size --condition condition --json` gives for the
        matcher (its evaluate_protocol, with the pool built above)."""
        if size == m and condition == "none":
            cell, queries, weights = refs, None, None
        else:
            cell, queries, weights = api._redrawn(matchers.reg, proto, refs, size, condition)
        options = {} if weights is None else {"layer_weights": list(weights)}
        found = api.evaluate_matcher(cell, a.matcher, queries=queries, operating_point=point, pool=pool, **options)
        return found.to_dict()

    loo_rows = []
    print("\n| condition | m′ | operating point | LOO accuracy (closed set) | open set: right · family · wrong · "
          "unknown | generator left out → unknown (+ its family) |")
    print("|---|---|---|---|---|---|")
    # (a folder processed in two ways has no leave-one-out of its own: `registry evaluate` takes one condition)
    for condition in dict.fromkeys(read_as(c) for c in ([] if a.skip_loo else conditions) if not c.startswith("half-")):
        if condition.startswith("jpeg") and condition not in matchers.conditions():
            from forensics.conditions import nearest_jpeg

            condition = nearest_jpeg(int(condition[4:]), matchers.conditions())
        for size, point in ((s, p) for s in sorted({min(s, m) for s in sizes}) for p in points):
            ev = evaluated(condition, size, point)
            lgo, ops = ev["leave_generator_out"], ev["open_set"]
            misranked = Counter(f"{p['generator']}→{p['predicted']}" for p in ev["predictions"]
                                if p["predicted"] != p["generator"])
            loo_rows.append({"condition": condition, "size": size, "operating_point": point, "n": ev["n"],
                             "correct": ev["correct"], "misranked": dict(sorted(misranked.items())),
                             "open_set": ops, "left_out_unknown": lgo["unknown"],
                             "left_out_family": lgo["family"], "left_out_n": lgo["n"],
                             "left_out_named": {g: dict(v["attributed_to"])
                                                for g, v in lgo.get("per_generator", {}).items() if v["attributed_to"]}})
            print(f"| {condition} | {size} | {point} | {ev['correct']}/{ev['n']} | {ops['answered_right']} · "
                  f"{ops['answered_family']} · {ops['answered_wrong']} · {ops['unknown']} | "
                  f"{lgo['unknown']} (+ {lgo['family']}) of {lgo['n']} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"matcher": a.matcher, "protocol": proto.name, "rows": rows, "loo": loo_rows,
                                      "threads": os.environ.get("FORENSICS_THREADS")}, indent=1) + "\n")
    return 0


class _Fitted(dict):
    """The matchers at one (condition, size), by who answers: "all", or the generator left out, each fitted when
    first asked for (a pooled calibration without a generator takes tens of seconds; a run of a few sets asks for
    few)."""

    def __init__(self, without, **given):
        super().__init__(**given)
        self._without = without

    def __missing__(self, generator: str):
        self[generator] = found = self._without(generator)
        return found


def default_matching(matcher: str = "alpha"):
    """(the default protocol, its enrolled references, its engine, the tool's matchers at every (condition,
    m′) — ``forensics.api._Matchers`` around the registry's ``matcher``), as ``attribute`` builds them."""
    from forensics import api
    from forensics.engine import make_engine
    from forensics.match import make_matcher

    reg = api.open_registry()
    proto = reg.protocol(reg.resolve_protocol(None))
    refs = reg.enrolled(proto.name)
    engine = make_engine(proto, reference_dir=reg.reference_dir)
    base = make_matcher(matcher, calibration=reg.calibration(proto.name, matcher)).fit(refs)
    return proto, refs, engine, api._Matchers(reg, proto, engine, refs, matcher, base)


def query_records(images: np.ndarray, condition: str, proto, engine, matchers, cache: Path | None, *,
                  webp_as_generated: bool = False, as_most_common: bool = False):
    """(the condition the set is matched under, its per-image records): the whole set read once as attribute
    reads it (files for png/jpeg/webp, the condition read from them), brought back to the generators' size
    and embedded once — a sub-batch's curve from the set's records is exactly its own curve
    (tests/test_any_size). Kept in ``cache`` (None: not kept) under a key of the images, the condition, the
    protocol, the tool's version and the codecs, so that measuring another matching rule re-reads nothing; a
    combination's records are kept part by part, so that two combinations sharing a part embed it once."""
    import dataclasses
    import hashlib

    from forensics import api
    from forensics.conditions import Detected, codecs
    from forensics.provenance import tool_version

    def key(part) -> str:  # one file per protocol a combination combines: parts shared by two combinations are reused
        # (what T and P_n are put through for records under each condition the registry keeps: the set's condition is
        # known only once its files are read, and records scored otherwise are others)
        against = sorted((c, made.get("reference", "none")) for c, made in matchers.reg.processing_of(part.name).items())
        return hashlib.sha256(images.tobytes() + repr((images.shape, condition, webp_as_generated, as_most_common,
                                                       part.digest, tool_version(), codecs(), against)
                                                      ).encode()).hexdigest()[:24]

    parts = proto.parts
    paths = None if cache is None else [cache / f"{key(part)}.npz" for part in parts]
    if paths is not None and all(path.is_file() for path in paths):
        kept = []
        for path in paths:
            with np.load(path, allow_pickle=False) as z:
                fields = json.loads(str(z["detected"]))
                kept += [z[f"layer{i}"] for i in range(int(z["layers"]))]
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        cond = Detected(**fields)
        return cond, kept, api._query_scorer(matchers, cond)
    refs = matchers.references
    with tempfile.TemporaryDirectory() as tmp:
        query, declared = as_query(images, condition, Path(tmp) / "q", webp_as_generated)
        # (as the most common: a folder of several sizes read as before, brought to one by the protocol's
        # resize, not each back to the generators' size)
        data, record, _ = api.read_images(query, proto, native=None if as_most_common else api.generated_size(refs))
        cond = api._condition(declared, record, matchers.conditions(), api.generated_size(refs),
                              mixtures=not as_most_common)
        # brought back to the generators' size, each image scored against T and P_n as attribute scores it
        kept = api._query_scorer(matchers, cond).records(api._as_matched(cond, data))
    if paths is not None:
        cache.mkdir(parents=True, exist_ok=True)
        start = 0
        for part, path in zip(parts, paths):
            layers = kept[start:start + len(part.layers)]
            start += len(part.layers)
            temp = path.with_suffix(".part.npz")
            np.savez(temp, detected=json.dumps(dataclasses.asdict(cond)), layers=len(layers),
                     **{f"layer{i}": r for i, r in enumerate(layers)})
            temp.replace(path)
    return cond, kept, api._query_scorer(matchers, cond)


def _outcome(answer, generator: str, families: dict[str, str]) -> str:
    """right (the generator named), family (its family named), unknown, or wrong (anything else named)."""
    if answer.verdict is not None:
        return "right" if answer.verdict == generator else "wrong"
    if answer.family is not None:
        return "family" if answer.family == families.get(generator) else "wrong"
    return "unknown"


def _shown(answer) -> str:
    return answer.verdict or (f"[{answer.family}]" if answer.family else "unknown")


if __name__ == "__main__":
    sys.exit(main())
