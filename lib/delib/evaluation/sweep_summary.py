"""The summary of a sweep (`delib sweep`): runs compared pair by pair on the same held-out prompts, and results
over seeds, into the sweep's folder (summary.json, report.html).

Pairs: two runs that differ in exactly one of the sweep's factors (a grid key, or which named variant) other than
the seed, compared model by model (the sft of one against the sft of the other, ...) with stage 06's paired
bootstrap, on the prompt ids both answered; runs whose held-out prompt ids differ are not paired, and the summary
says why. Seeds: runs that differ only in `seed` form a group; each metric's mean over the seeds gets a two-level
bootstrap interval (resample the seeds, then the prompts), so that it counts both the prompts and the seeds. When
the seeds answered the same prompts, one resample of the prompts serves every seed (the prompts are one sample,
not one per seed); otherwise each seed's prompts are resampled on their own.

Pooled over seeds (`pooled_over_seeds`): in each group of three or more seeds, each trained variant against the
strongest untrained baseline of each primary metric (its mean over the seeds, chance references included): the
per-prompt paired differences of every seed, pooled as the mean over seeds of each seed's mean difference, with a
hierarchical bootstrap (seeds resampled, then prompts: one resample of the prompts for every seed when they answered
the same ones), a bootstrap p, and Holm over the primary family. Two seeds are reported and never called
significant: their spread is not an estimate.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from delib.evaluation.findings import percent
from delib.evaluation.metrics import (_interval, _matrix, _ratios, adjust_for_multiplicity, bootstrap_metrics,
                                      bootstrap_p, bootstrap_weights, fmt, fmt_diff, heldout_metrics, holm)
from delib.evaluation.reading import load_evaluation
from delib.run.config import EvaluateParams
from delib.run.io import write_json_atomic

# The metrics a sweep compares (the headline of every run, without the per-category keys).
SWEEP_KEYS = ("not_unsafe", "not_overrefuse", "correct_action", "unclear", "truncated", "citation_accuracy",
              "format_adherence", "style_hard_refusal", "style_safe_completion")


def _defs(answers: pd.DataFrame):
    return [d for d in heldout_metrics(answers) if d.key in SWEEP_KEYS and d.column in answers]


def one_key_apart(a: dict, b: dict) -> Optional[str]:
    """The one key (factor) in which two runs differ; None when they differ in none or in several."""
    keys = set(a) | set(b)
    differ = [k for k in sorted(keys) if json.dumps(a.get(k)) != json.dumps(b.get(k))]
    return differ[0] if len(differ) == 1 else None


def compare_pairs(runs: dict[str, dict], resamples: int = 1000, seed: int = 0, confidence: float = 0.95
                  ) -> tuple[pd.DataFrame, list[str]]:
    """Paired differences (run a minus run b) for every pair of runs one factor apart other than the seed (the
    seeds have their own summary), per model both evaluated; and the reasons pairs were not compared.
    `runs`: name -> {"factors" (else "overrides"), "overrides", "answers"}."""
    rows, skipped = [], []
    for (a, ra), (b, rb) in itertools.combinations(runs.items(), 2):
        fa, fb = ra.get("factors", ra["overrides"]), rb.get("factors", rb["overrides"])
        key = one_key_apart(fa, fb)
        if key is None or key == "seed":
            continue
        xa, xb = ra["answers"], rb["answers"]
        ids_a, ids_b = set(xa["prompt_id"].astype(str)), set(xb["prompt_id"].astype(str))
        if ids_a != ids_b:
            skipped.append(f"{a} and {b} (differ in {key}) are not paired: their held-out prompt ids differ "
                           f"({len(ids_a)} and {len(ids_b)} prompts, {len(ids_a & ids_b)} in common)")
            continue
        for variant in [v for v in dict.fromkeys(xa["variant"]) if v in set(xb["variant"])]:
            both = pd.concat([xa[xa["variant"] == variant].assign(variant="a"),
                              xb[xb["variant"] == variant].assign(variant="b")], ignore_index=True)
            _, d = bootstrap_metrics(both, _defs(both), resamples, seed, confidence, pairs=[("a", "b")])
            for r in d.to_dict("records"):
                rows.append({"run": a, "against": b, "differs_in": key, "value": json.dumps(fa.get(key)),
                             "against_value": json.dumps(fb.get(key)), "variant": variant,
                             **{k: r[k] for k in ("key", "diff", "lo", "hi", "n", "up", "down", "better", "worse",
                                                  "p_sign", "significant", "confidence")}})
    pairs = pd.DataFrame(rows)
    if len(pairs):  # every pair of runs, variant and metric is one exploratory family: Benjamini-Hochberg
        pairs = adjust_for_multiplicity(pairs, primary=(), trained=())
    return pairs, skipped


def over_seeds(runs: dict[str, dict], resamples: int = 1000, seed: int = 0, confidence: float = 0.95
               ) -> pd.DataFrame:
    """For each group of runs that differ only in `seed` (two or more seeds), each variant and metric: the mean
    over seeds, with a two-level bootstrap interval (seeds resampled, then prompts: one resample of the prompts for
    every seed when they answered the same prompts, else one per seed)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, names in _seed_groups(runs).items():
        pick = rng.integers(0, len(names), size=(resamples, len(names)))  # the seeds drawn in each resample
        answers = {n: runs[n]["answers"] for n in names}
        ids, weights, shared = _prompt_resamples(answers, resamples, seed)
        for variant in _in_every_run(answers):
            for d in _defs(answers[names[0]][answers[names[0]]["variant"] == variant]):
                points, boots = [], []
                for n in names:
                    point, b = _ratios(*_per_prompt(answers[n], variant, d, ids[n]), weights[n])
                    boots.append(b)
                    points.append(point)
                lo, hi = _interval(_seeds_then_prompts(boots, pick), confidence)
                rows.append({"group": label, "variant": variant, "key": d.key, "seeds": len(names),
                             "mean": float(np.nanmean(points)), "lo": lo, "hi": hi,
                             "per_seed": [None if np.isnan(p) else round(float(p), 4) for p in points],
                             "same_prompts": shared, "runs": names, "confidence": confidence})
    return pd.DataFrame(rows)


MIN_SEEDS = 3  # fewer seeds are pooled and shown, never called significant
DEFAULT_PRIMARY = tuple(EvaluateParams.model_fields["primary"].default)  # for runs that did not record theirs


def _seed_groups(runs: dict[str, dict]) -> dict[str, list[str]]:
    """Runs that differ only in `seed`, by the rest of their overrides."""
    groups: dict[str, list[str]] = {}
    for name, r in runs.items():
        if "seed" in r["overrides"]:
            rest = {k: v for k, v in r["overrides"].items() if k != "seed"}
            groups.setdefault(json.dumps(rest, sort_keys=True), []).append(name)
    return {label: names for label, names in groups.items() if len(names) >= 2}


def _in_every_run(answers: dict[str, pd.DataFrame]) -> list[str]:
    """The variants every run of a seed group answered with, in the first run's order."""
    first = next(iter(answers.values()))
    return [v for v in dict.fromkeys(first["variant"]) if all(v in set(a["variant"]) for a in answers.values())]


def _prompt_resamples(answers: dict[str, pd.DataFrame], resamples: int, seed: int
                      ) -> tuple[dict[str, pd.Index], dict[str, np.ndarray], bool]:
    """Each run's prompt ids and bootstrap weights over them, and whether the runs answered the same prompts: then
    one resample of the prompts serves every seed (a hard prompt is hard for each), else each run has its own."""
    ids = {n: pd.Index(sorted(a["prompt_id"].astype(str).unique())) for n, a in answers.items()}
    shared = len({tuple(i) for i in ids.values()}) == 1
    weights = {n: bootstrap_weights(len(ids[n]), resamples, seed + 1 + (0 if shared else i))
               for i, n in enumerate(answers)}
    return ids, weights, shared


def _seeds_then_prompts(boots: list[np.ndarray], pick: np.ndarray) -> np.ndarray:
    """The two-level resamples: in each, the seeds `pick` draws, each at its own resample of the prompts, averaged."""
    b = np.vstack(boots)  # (seeds, resamples)
    with np.errstate(invalid="ignore"):
        return np.nanmean(b[pick, np.arange(b.shape[1])[:, None]], axis=1)


def _per_prompt(answers: pd.DataFrame, variant: str, d, ids: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """One variant's per-prompt values of metric `d` and their mask, aligned on `ids`."""
    frame = answers[answers["variant"] == variant]
    frame = frame.assign(prompt_id=frame["prompt_id"].astype(str))
    vals, mask = _matrix(frame, "prompt_id", [variant], d.column, d.select(frame).fillna(False).astype(bool), ids)
    return vals[0], mask[0]


def pooled_over_seeds(runs: dict[str, dict], primary: Sequence[str] = DEFAULT_PRIMARY, resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """For each group of runs that differ only in `seed`: each trained variant (sft, sft_rl) against the strongest
    untrained baseline of each primary metric, pooled over the seeds. `runs[name]["answers"]` may hold the chance
    references' rows (grading.chance_answers) beside the answers. Columns: group, variant, baseline, key, seeds,
    diff (mean over seeds of each seed's mean paired difference), lo, hi (hierarchical bootstrap: seeds, then the
    prompts of each), p (two-sided bootstrap p), p_holm (Holm over the group's primary family), significant (the
    interval excludes 0, p_holm < 1 - confidence, and at least MIN_SEEDS seeds), per_seed."""
    from delib.evaluation.lineup import BASELINES, TRAINED_STAGE

    rng = np.random.default_rng(seed)
    rows = []
    for label, names in _seed_groups(runs).items():
        answers = {n: runs[n]["answers"] for n in names}
        present = _in_every_run(answers)
        ids, weights, _ = _prompt_resamples(answers, resamples, seed)
        pick = rng.integers(0, len(names), size=(resamples, len(names)))  # the seeds drawn in each resample
        defs = {d.key: d for d in heldout_metrics(answers[names[0]]) if d.key in primary}
        group_rows = []
        for key, d in defs.items():
            means = {v: np.nanmean([_ratios(*_per_prompt(answers[n], v, d, ids[n]), weights[n])[0] for n in names])
                     for v in present if v in BASELINES}
            means = {v: m for v, m in means.items() if np.isfinite(m)}
            if not means:
                continue
            baseline = (min if d.kind == "share" else max)(means, key=means.get)
            for trained in [v for v in present if v in TRAINED_STAGE]:
                points, boots = [], []
                for n in names:
                    a, ma = _per_prompt(answers[n], trained, d, ids[n])
                    b, mb = _per_prompt(answers[n], baseline, d, ids[n])
                    both = ma & mb
                    pa, ba = _ratios(a, both, weights[n])
                    pb, bb = _ratios(b, both, weights[n])
                    points.append(pa - pb)
                    boots.append(ba - bb)
                pooled = _seeds_then_prompts(boots, pick)
                lo, hi = _interval(pooled, confidence)
                p = bootstrap_p(pooled)
                group_rows.append({"group": label, "variant": trained, "baseline": baseline, "key": key,
                                   "seeds": len(names), "diff": float(np.nanmean(points)), "lo": lo, "hi": hi,
                                   "p": p, "per_seed": [None if np.isnan(x) else round(float(x), 4) for x in points],
                                   "runs": names, "confidence": confidence})
        if group_rows:
            g = pd.DataFrame(group_rows)
            g["p_holm"] = holm(g["p"].to_numpy(float))
            excludes = (g["lo"] > 0) | (g["hi"] < 0)
            g["significant"] = excludes & (g["p_holm"] < 1 - confidence) & (g["seeds"] >= MIN_SEEDS)
            rows.append(g)
    columns = ["group", "variant", "baseline", "key", "seeds", "diff", "lo", "hi", "p", "p_holm", "significant",
               "per_seed", "runs", "confidence"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def summarise(folder: Path, status: Sequence[dict], resamples: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> dict:
    """Read the finished runs of a sweep, compare them, and write summary.json and report.html into `folder`."""
    from delib.evaluation import plots, report

    runs, missing, primary = {}, [], None
    for row in status:
        rdir = Path(row.get("run_dir") or "")
        try:
            ev = load_evaluation(rdir) if row.get("status") == "ok" else None
        except FileNotFoundError as err:
            ev, row = None, {**row, "status": f"no evaluation ({err})"}
        if ev is None or ev["answers"].empty:
            missing.append(f"{row['run']}: {row.get('status')}")
            continue
        runs[row["run"]] = {"overrides": row["overrides"], "factors": row.get("factors", row["overrides"]),
                            "answers": ev["answers"], "chance": _chance(rdir, ev["answers"])}
        primary = primary or ev["info"].get("primary")
    pairs, skipped = compare_pairs(runs, resamples, seed, confidence)
    seeds = over_seeds(runs, resamples, seed, confidence)
    with_chance = {n: {**r, "answers": pd.concat([r["answers"], r["chance"]], ignore_index=True)}
                   for n, r in runs.items()}
    pooled = pooled_over_seeds(with_chance, primary or DEFAULT_PRIMARY, resamples, seed, confidence)
    doc = {"runs": list(status), "not_summarised": missing, "pairs": pairs.to_dict("records"),
           "not_paired": skipped, "over_seeds": seeds.to_dict("records"),
           "pooled_over_seeds": pooled.to_dict("records"), "primary": list(primary or DEFAULT_PRIMARY),
           "resamples": resamples, "confidence": confidence}
    write_json_atomic(folder / "summary.json", json.loads(pd.Series([doc]).to_json(orient="records"))[0])
    pct = percent(confidence)
    figures = []
    if not seeds.empty:
        m = seeds.assign(variant=seeds["group"] + " " + seeds["variant"], value=seeds["mean"])
        keys = [k for k in SWEEP_KEYS if k in set(m["key"])]
        figures.append((f"Mean over seeds with its two-level {pct} interval", plots.metrics_per_variant(
            m, keys, folder / "over_seeds.png", "")))
    runs_table = pd.DataFrame([{"run": r["run"], "overrides": json.dumps(r["overrides"]), "status": r.get("status"),
                                "seconds": r.get("seconds")} for r in status])
    sections = [
        report.Section("Runs", [f"{len(status)} runs; summarised: {len(runs)}."] + missing, [("Runs", runs_table)]),
        report.Section("Over seeds", [
            f"Runs that differ only in seed: each metric's mean over the seeds, with a {pct} two-level bootstrap "
            "interval (the seeds resampled, then the prompts; one resample of the prompts for every seed when the "
            "seeds answered the same prompts)."],
            [("mean [interval] (seeds)", seeds_table(seeds))], figures),
        report.Section("Pooled over seeds: the primary results", [
            f"Each trained variant against the strongest untrained baseline of each primary metric "
            f"({', '.join(primary or DEFAULT_PRIMARY)}; chance references included), the per-prompt paired "
            f"differences of every seed pooled: the mean over seeds of each seed's mean difference, with a {pct} "
            "hierarchical bootstrap interval (the seeds resampled, then the prompts within each), a bootstrap p and "
            f"Holm over the primary family. A group of fewer than {MIN_SEEDS} seeds is shown and never called "
            "significant. This, not one run's interval (which covers the prompts only), is the result to cite."],
            [(f"difference [{pct} interval], Holm p", pooled_table(pooled))]),
        report.Section("Pairs of runs", [
            "Runs that differ in one of the sweep's factors other than the seed (a grid key, or the named variant), "
            "model by model, paired on the held-out prompts both answered; * marks a significant difference (the "
            "interval excludes 0 and the sign test's q, Benjamini-Hochberg over every pair, variant and metric of the "
            "sweep, is below 1 - confidence): an exploratory lead, not a result."]
            + skipped, [(f"difference [{pct} interval]", pairs_table(pairs))]),
    ]
    report.write_html(folder / "report.html", f"Sweep {folder.name}", sections)
    return doc


def _chance(rdir: Path, answers: pd.DataFrame) -> pd.DataFrame:
    """The chance references of citation on the prompts a run answered (empty without its parsed spec)."""
    from delib.evaluation.grading import chance_answers
    from delib.run import files
    from delib.spec.document import Spec

    spec = files.read(rdir, files.SPEC, missing_ok=True)
    if not spec or answers.empty:
        return pd.DataFrame()
    prompts = answers.drop_duplicates("prompt_id").rename(columns={"prompt_id": "id"})
    return chance_answers(prompts, Spec.from_dict(spec))


def pooled_table(pooled: pd.DataFrame) -> pd.DataFrame:
    """The pooled primary results as the report shows them: metric vs baseline by (group, variant, seeds)."""
    if pooled.empty:
        return pooled
    t = pooled.assign(cell=[f"{fmt_diff(x, lo, hi)} p={p:.2g}" + (" *" if s else "") for x, lo, hi, p, s in
                            zip(pooled["diff"], pooled["lo"], pooled["hi"], pooled["p_holm"], pooled["significant"])],
                      row=pooled["key"] + " vs " + pooled["baseline"],
                      column=pooled["group"] + " " + pooled["variant"] + " (" + pooled["seeds"].astype(str) + " seeds)")
    return t.pivot_table(index="row", columns="column", values="cell", aggfunc="first")


def seeds_table(seeds: pd.DataFrame) -> pd.DataFrame:
    if seeds.empty:
        return seeds
    t = seeds.assign(cell=[f"{fmt(m, lo, hi)} ({s})" for m, lo, hi, s in
                           zip(seeds["mean"], seeds["lo"], seeds["hi"], seeds["seeds"])],
                     column=seeds["group"] + " " + seeds["variant"])
    return t.pivot_table(index="key", columns="column", values="cell", aggfunc="first")


def pairs_table(pairs: pd.DataFrame) -> pd.DataFrame:
    if pairs.empty:
        return pairs
    t = pairs.assign(pair=pairs["run"] + " - " + pairs["against"] + " (" + pairs["variant"] + ")",
                     cell=[fmt_diff(x, lo, hi) + (" *" if s else "") for x, lo, hi, s in
                           zip(pairs["diff"], pairs["lo"], pairs["hi"], pairs["significant"])])
    return t.pivot_table(index="key", columns="pair", values="cell", aggfunc="first")
