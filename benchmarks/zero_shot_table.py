r"""The zero-shot table and pictures of RESULTS.md (no real image at all), from the reports stored
in benchmarks/reports/fashion_mnist_zero_shot/ (``zskd``, ``zskd_blackbox``; made by
benchmarks/label_only_runs.py) and the zsdb3kd rows of benchmarks/reports/fashion_mnist_label_only/.

  python benchmarks/zero_shot_table.py   # prints the table; reproduce.py --write_only puts it in
                                         # RESULTS.md and draws the picture

Impression grids (one row per class) are copied by hand from a run's ``grid_impressions.png`` to
benchmarks/pictures/fashion_mnist_<row>_impressions.png.
"""

from __future__ import annotations

import os

import label_only_table  # noqa: E402  (benchmarks/, beside this script)
import numpy as np

REPO = label_only_table.REPO
REPORTS = os.path.join(REPO, "benchmarks", "reports", "fashion_mnist_zero_shot")
ROWS = {
    "zskd": ("zskd", "white-box: the teacher's SavedModel in-process; 48,000 impressions, 1,500 "
                     "Adam steps (the paper's)"),
    "zskd_issue27": ("zskd", "white-box, issue 27's defaults at the ablation size: 12,000 "
                             "impressions, 100 Adam steps at 0.01; student at τ = 1, 4 MixUp views "
                             "of each relabelled by the teacher (60,000 images), the epoch of "
                             "best validation accuracy exported"),
    "zskd_e200": ("zskd", "try: the paper's impressions (seed 0's, reused), student 200 epochs "
                          "instead of 50"),
    "zskd_e15": ("zskd", "try: the same impressions, student 15 epochs"),
    "zskd_blackbox": ("zskd_blackbox", "black-box: gRPC answers only; 12,000 impressions, 100 "
                                       "steps, Adam 0.01, 2 x 10 probes per step"),
    "zskd_blackbox_issue27": ("zskd_blackbox", "black-box with issue 27's white-box choices: the "
                                               "same impressions' search, student at τ = 1, 4 "
                                               "MixUp views of each labelled by queries, the "
                                               "epoch of best validation accuracy"),
    "zskd_blackbox_lr05": ("zskd_blackbox", "try: as above, Adam 0.05 (the first default)"),
    "zskd_short": ("zskd", "try: white-box at the black-box's size: 12,000 impressions, 100 "
                           "steps, Adam 0.05"),
    "zskd_short_lr01": ("zskd", "try: the same, Adam 0.01"),
    "zskd_short_lr003": ("zskd", "try: the same, Adam 0.003"),
}
# The zsdb3kd rows (label-only reports) are the label-only table's.
ROWS.update({k: v for k, v in label_only_table.ROWS.items() if v[0] == "zsdb3kd"})
PUBLISHED = {"zskd": "79.62 (ZSKD)", "zsdb3kd_p100_i10_q500": "72.31 (ZSDB3KD, full budget)",
             "zsdb3kd_n400k_noaug": "72.31 (ZSDB3KD, about 6 x 10^9 queries)"}
GOAL_ZSDB3KD = (60.0, 2e8)  # Issue 27: accuracy % at a budget of at most this many queries.
GOAL_ZSKD = 80.0
SYNTHESIS_STAGES = ("impressions", "zsdb3kd_samples")


def summary() -> list[dict]:
    runs = label_only_table.load(REPORTS)
    runs.update({k: v for k, v in label_only_table.load().items() if k.startswith("zsdb3kd")})
    out = label_only_table.rows(runs, ROWS)
    for r in out:
        images = [sum(x["transfer_set_sources"].values()) for x in r["runs"]]
        search = [next((x["stage_seconds"][s] for s in SYNTHESIS_STAGES if s in x["stage_seconds"]),
                       None) for x in r["runs"]]
        r["images"] = int(np.mean(images))
        r["search_seconds"] = (float(np.mean(search)) if all(s is not None for s in search)
                               else None)
    return out


def markdown(rows: list[dict], results_md: str) -> list[str]:
    lines = ["| method | setting | seeds | images | teacher queries | synthesis (s per 1,000 "
             "images) | student acc. (mean ± sample std) | per seed | validation acc. | published |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        acc, per_seed = label_only_table.accuracy_cells(r, results_md)
        synth = ("-" if r["search_seconds"] is None else "reused" if r["search_seconds"] < 1 else
                 f"{r['search_seconds'] / 60:.0f} min ({1000 * r['search_seconds'] / r['images']:.0f})")
        lines.append(f"| {r['method']} | {r['what']} | {len(r['seeds'])} | {r['images']:,} | "
                     f"{r['queries']:,} | {synth} | {acc} | {per_seed} | "
                     f"{r['validation_mean']:.2f} | {PUBLISHED.get(r['name'], '-')} |")
    return lines


def goals(rows: list[dict]) -> list[str]:
    by = {}
    for r in rows:  # Per method, the best row that is not a try (3 seeds before fewer).
        best = by.get(r["method"])
        if not r["what"].startswith("try") and (
                best is None or (len(r["seeds"]) >= 3, r["test_mean"])
                > (len(best["seeds"]) >= 3, best["test_mean"])):
            by[r["method"]] = r
    lines = []
    if "zskd" in by:
        z = by["zskd"]
        lines.append(f"- Goal: `zskd` at or above {GOAL_ZSKD:.0f}% mean over 3 seeds: "
                     f"{z['test_mean']:.2f}% over {len(z['seeds'])} seed(s), row "
                     f"`{z['name']}`, {GOAL_ZSKD - z['test_mean']:.2f} points short "
                     f"({'met' if z['test_mean'] >= GOAL_ZSKD and len(z['seeds']) >= 3 else 'not met'}).")
    if "zskd_blackbox" in by and "zsdb3kd" in by:
        b, d = by["zskd_blackbox"], by["zsdb3kd"]
        lines.append(f"- Goal: `zskd_blackbox` above `zsdb3kd`: {b['test_mean']:.2f}% with "
                     f"{b['queries']:,} queries against {d['test_mean']:.2f}% with "
                     f"{d['queries']:,} ({'met' if b['test_mean'] > d['test_mean'] else 'not met'}).")
    if "zskd_blackbox" in by:
        b = by["zskd_blackbox"]
        tried = next((r for r in rows if r["name"] == "zskd_blackbox_issue27"), None)
        lines.append(f"- Goal (issue 27): `zskd_blackbox` at or above 75%: {b['test_mean']:.2f}% "
                     f"over {len(b['seeds'])} seed(s) (row `{b['name']}`"
                     + (f"; issue 27's choices: {tried['test_mean']:.2f}% over "
                        f"{len(tried['seeds'])} seed(s)" if tried else
                        "; not re-measured with issue 27's choices")
                     + f"; {'met' if b['test_mean'] >= 75 else 'not met'}).")
    within = [r for r in rows if r["method"] == "zsdb3kd" and r["queries"] <= GOAL_ZSDB3KD[1]]
    if within:
        d = max(within, key=lambda r: (len(r["seeds"]) >= 3, r["test_mean"]))
        met = d["test_mean"] >= GOAL_ZSDB3KD[0] and len(d["seeds"]) >= 3
        lines.append(f"- Goal (issue 27): `zsdb3kd` at or above {GOAL_ZSDB3KD[0]:.0f}% with at most "
                     f"2 x 10^8 queries, 3 seeds: {d['test_mean']:.2f}% over {len(d['seeds'])} "
                     f"seed(s) with {d['queries']:,} queries, row `{d['name']}` "
                     f"({'met' if met else 'not met'}).")
    return lines


def plot(rows: list[dict], path: str, few_shot: list[tuple[str, float, int]]) -> str | None:
    """Accuracy versus teacher queries of the rows that are not tries: black-box rows as points,
    white-box zskd (no query) as a line, few-shot references (what, accuracy, queries) as open
    squares."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in (r for r in rows if not r["what"].startswith("try")):
        if r["queries"] == 0:
            ax.axhline(r["test_mean"], ls="--", c="C0", lw=1.2,
                       label=f"{r['method']} (white-box, 0 queries): {r['test_mean']:.2f}")
        else:
            ax.errorbar(r["queries"], r["test_mean"], yerr=r["test_std"] or 0, capsize=3, fmt="o",
                        label=f"{r['method']}: {r['test_mean']:.2f}")
    for what, acc, queries in few_shot:
        ax.plot(queries, acc, "s", mfc="none", label=f"few-shot {what}: {acc:.2f}")
    ax.axhline(79.62, ls=":", c="gray", lw=1, label="published ZSKD, 79.62")
    return label_only_table.finish_plot(
        plt, fig, ax, path, "Fashion-MNIST, zero-shot (no real image) against few-shot references",
        legend=dict(fontsize=7, loc="center left"))


ABLATION = os.path.join(REPORTS, "ablation")


def ablation_lines(results_md: str) -> list[str]:
    """The ablation table (benchmarks/zskd_ablation.py): one line per row and seed, validation
    first (what the choices are made on), the test figure beside it; the epoch selected on the
    validation split where the row selects (its final epoch's validation figure beside it)."""
    runs = label_only_table.load(ABLATION)
    if not runs:
        return []
    lines = ["| row | change (alone, over `base` unless said) | seed | transfer images | "
             "validation acc. | selected epoch (final epoch's validation) | test acc. | "
             "search s | student s | report |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for name in sorted(runs, key=lambda n: (n != "base", n)):
        for seed, r in sorted(runs[name].items()):
            scores = r.get("student_selection_scores") or {}
            selected = r.get("student_selected_epoch")
            sel = (f"{selected} ({100 * scores[str(max(map(int, scores)))]:.2f})"
                   if selected and scores else "final")
            stages = r["stage_seconds"]
            lines.append(
                f"| {name} | {r['ablation']['what']} | {seed} | "
                f"{sum(r['transfer_set_sources'].values()):,} | "
                f"{100 * r['student_validation_accuracy']:.2f} | {sel} | "
                f"{100 * r['student_accuracy']:.2f} | {stages.get('impressions', 0):.0f} | "
                f"{stages.get('student_training', 0):.0f} | "
                f"[json]({os.path.relpath(r['path'], os.path.dirname(results_md))}) |")
    return lines


def section(results_md: str, few_shot: list[tuple[str, float, int]] = ()) -> list[str]:
    """RESULTS.md's zero-shot section; [] without reports. ``few_shot``: (what, accuracy %,
    queries) of few-shot rows to show beside."""
    rows = summary()
    if not rows:
        return []
    pictures = os.path.join(os.path.dirname(results_md), "benchmarks", "pictures")
    os.makedirs(pictures, exist_ok=True)
    picture = plot(rows, os.path.join(pictures, "fashion_mnist_zero_shot_accuracy_vs_queries.png"),
                   list(few_shot))
    lines = ["## Zero-shot: no real image (ZSKD Data Impressions, black-box ZSKD, ZSDB3KD)", "",
             "Made by `benchmarks/label_only_runs.py` and `benchmarks/zero_shot_table.py` from the",
             "reports in [benchmarks/reports/fashion_mnist_zero_shot/]"
             "(benchmarks/reports/fashion_mnist_zero_shot/). Teacher: the LeNet-5 above (90.75%); "
             "`zskd`",
             "loads its SavedModel in-process (no query), `zskd_blackbox` reaches it over gRPC "
             "(probabilities),",
             "`zsdb3kd` through its label-only view. Student: LeNet-5-half, 50 epochs, batch 64, Adam "
             "1e-3 with",
             "cosine decay, `kd` at T = 20 for the ZSKD rows before issue 27 (targets tempered "
             "twice), `tempered_kd` at τ = 1 for `zskd_issue27` (DecisionKD at T = 20 for zsdb3kd); "
             "final-epoch",
             "weights, but the epoch of best validation accuracy for `zskd_issue27`; full test set. "
             "Synthesis: the impression search's wall time on 2 CPU cores "
             "(and per 1,000 images).", ""]
    lines += markdown(rows, results_md)
    for what, acc, queries in few_shot:
        lines.append(f"| few-shot reference | {what} | 3 | 2,000 real + 48,000 | {queries:,} | - | "
                     f"**{acc:.2f}** | - | - | - |")
    lines += ["", *goals(rows)] if goals(rows) else []
    for name in ROWS:
        grid = os.path.join(pictures, f"fashion_mnist_{name}_impressions.png")
        if os.path.exists(grid):
            lines += ["", f"`{name}` impressions, one row per class (T-shirt ... ankle boot):", "",
                      f"![{name} impressions]({os.path.relpath(grid, os.path.dirname(results_md))})"]
    if picture:
        lines += ["", f"![zero-shot accuracy vs queries]"
                      f"({os.path.relpath(picture, os.path.dirname(results_md))})"]
    ablation = ablation_lines(results_md)
    if ablation:
        lines += ["", "### ZSKD ablations (issue 27): each change alone, on the validation split",
                  "", "`python benchmarks/zskd_ablation.py` (seed 0; the 2-core development "
                  "machine, other runs sharing it part of the time): 12,000 impressions, 100 Adam "
                  "steps at 0.01, the same teacher (90.75%, exported with logits), LeNet-5-half "
                  "50 epochs; `base` is issue 27's code with every new option off. Search seconds "
                  "0: the impressions were reused from the row's group (same search settings).",
                  "", *ablation]
    notes = os.path.join(REPO, "benchmarks", "ZERO_SHOT_NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += ["", f.read().rstrip()]
    return lines


if __name__ == "__main__":
    print("\n".join(markdown(summary(), os.path.join(REPO, "RESULTS.md"))))
