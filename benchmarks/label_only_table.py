r"""The label-only table and picture of RESULTS.md, from the reports stored in
benchmarks/reports/fashion_mnist_label_only/ (made by benchmarks/label_only_runs.py).

  python benchmarks/label_only_table.py   # prints the table; reproduce.py --write_only puts it in
                                          # RESULTS.md and draws the picture

A stored report is ``<row>-seed<k>.json``; ROWS says what each row is. Runs that reused another
run's boundary search (the temperature tries: T acts after the search) are charged that run's
search queries and seconds, marked †.
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTS = os.path.join(REPO, "benchmarks", "reports", "fashion_mnist_label_only")

# Row name -> (method shown, what it is). Rows are shown in this order; absent rows are left out.
ROWS = {
    "fsbbt_soft": ("fsbbt", "soft labels: the probability teacher (the reference row)"),
    "fsbbt_onehot": ("fsbbt", "top-1 labels, one-hot targets"),
    "fsbbt_onehot_e25": ("fsbbt", "top-1 labels, one-hot targets, fsbbt's current recipe (25 "
                                  "epochs, no training-time augmentation)"),
    "fsbbt_votes19_s01": ("fsbbt", "votes: 19 noisy copies per image, σ 0.1, current recipe"),
    "fsbbt_votes19_s02": ("fsbbt", "votes: 19 noisy copies per image, σ 0.2, current recipe"),
    "fsbbt_votes39_s01": ("fsbbt", "votes: 39 noisy copies per image, σ 0.1, current recipe"),
    "db3kd_d1": ("db3kd", "bd, 1 direction"),
    "db3kd_d5": ("db3kd", "bd, 5 directions"),
    "db3kd_d20": ("db3kd", "bd, 20 directions"),
    "db3kd": ("db3kd", "bd, 200 directions (the reference's)"),
    "db3kd_e200": ("db3kd", "bd, 200 directions, student 200 epochs (the tuned student-alone "
                            "recipe; issue 27)"),
    "db3kd_e200_T5": ("db3kd", "bd, 200 directions, student 200 epochs, T = 5 (issue 27: T on "
                               "the validation split)"),
    "db3kd_e200_T1": ("db3kd", "bd, 200 directions, student 200 epochs, T = 1"),
    "db3kd_e200_T0.25": ("db3kd", "bd, 200 directions, student 200 epochs, T = 0.25 (chosen on "
                                  "the validation split)"),
    "db3kd_mbd_q500": ("db3kd", "mbd: bd 200 directions + Sign-OPT, 500 queries per pair"),
    "fsbbt_db3kd_d5": ("fsbbt_db3kd", "bd, 5 directions, T = 20 (the reference's T)"),
    "fsbbt_db3kd_d5_T2": ("fsbbt_db3kd", "bd, 5 directions, T = 2"),
    "fsbbt_db3kd_d5_T5": ("fsbbt_db3kd", "bd, 5 directions, T = 5"),
    "fsbbt_db3kd_d5_T10": ("fsbbt_db3kd", "bd, 5 directions, T = 10"),
    "zsdb3kd_p100_i10_q500": ("zsdb3kd", "zero-shot, before issue 27's search: 100 uniform-noise "
                                         "samples per class asked, 10 pushes of 500 Sign-OPT "
                                         "queries; bd 200 directions"),
    "zsdb3kd_b1e7": ("zsdb3kd", "issue 27's search: 2,400 smooth-noise samples per class, 1 "
                                "HopSkipJump push (B0 = 100, 7x7 probes); bd 10 directions, T = 20; "
                                "student with the recipe's MixUp, rotations and shifts"),
    "zsdb3kd_n100k_onehot": ("zsdb3kd", "10,000 smooth-noise samples per class, no push, no bd "
                                        "search (one-hot top-1 targets); student 20 epochs with "
                                        "the recipe's MixUp, rotations and shifts"),
    "zsdb3kd_n100k_onehot_noaug": ("zsdb3kd", "the same, student 20 epochs without training-time "
                                              "augmentation (zsdb3kd's default since issue 27)"),
    "zsdb3kd_n100k_i5_noaug": ("zsdb3kd", "the 100,000 samples, 5 HopSkipJump pushes, one-hot; "
                                          "student 20 epochs, no augmentation"),
    "zsdb3kd_n400k_noaug": ("zsdb3kd", "40,000 smooth-noise samples per class, no push, one-hot; "
                                       "student 20 epochs, no augmentation"),
}
SEARCH_FROM = {"fsbbt_db3kd_d5_T2": "fsbbt_db3kd_d5", "fsbbt_db3kd_d5_T5": "fsbbt_db3kd_d5",
               "fsbbt_db3kd_d5_T10": "fsbbt_db3kd_d5", "db3kd_e200_T5": "db3kd_e200",
               "db3kd_e200_T1": "db3kd_e200", "db3kd_e200_T0.25": "db3kd_e200",
               "zsdb3kd_n100k_onehot_noaug": "zsdb3kd_n100k_onehot"}
PUBLISHED = {"fsbbt_soft": "84.73 (FS-BBT)", "zsdb3kd_p100_i10_q500": "72.31 (ZSDB3KD, full budget)"}
SEARCH_STAGES = ("db3kd_search", "zsdb3kd_samples")


def load(reports_dir: str = REPORTS) -> dict[str, dict[int, dict]]:
    """Row name -> seed -> report (with its ``path``)."""
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(glob.glob(os.path.join(reports_dir, "*-seed*.json"))):
        match = re.fullmatch(r"(.+)-seed(\d+)\.json", os.path.basename(path))
        with open(path) as f:
            runs.setdefault(match[1], {})[int(match[2])] = json.load(f) | {"path": path}
    return runs


def _cost(name: str, seed: int, report: dict, runs: dict) -> tuple[int, float, bool]:
    """(teacher queries, wall seconds, search reused) of one run: what its work dir sent over its
    life (every process of a run that was killed and resumed; else what this process sent and found
    in its ledger); a run that reused another's search is charged that search. Seconds are the last
    process's stages only."""
    queries = report.get("teacher_queries_total") or (
        sum(report["teacher_queries_sent_by_stage"].values()) + report["teacher_ledger_hits"])
    seconds = sum(report["stage_seconds"].values())
    source = runs.get(SEARCH_FROM.get(name, ""), {}).get(seed)
    reused = source is not None and not any(
        report["teacher_queries_sent_by_stage"].get(s) for s in SEARCH_STAGES)
    if reused:  # The same method cost: the source's labels and search.
        queries = (sum(source["teacher_queries_sent_by_stage"].values())
                   + source["teacher_ledger_hits"])
        seconds += sum(source["stage_seconds"].get(stage, 0.0) for stage in SEARCH_STAGES)
    return queries, seconds, reused


def rows(runs: dict, table: dict | None = None) -> list[dict]:
    """One summary per row of ``table`` (default ``ROWS``) that has reports: accuracies in %,
    mean ± sample std."""
    out = []
    for name, (method, what) in (ROWS if table is None else table).items():
        if name not in runs:
            continue
        seeds = sorted(runs[name])
        reports = [runs[name][s] for s in seeds]
        test = np.array([100 * r["student_accuracy"] for r in reports])
        costs = [_cost(name, s, r, runs) for s, r in zip(seeds, reports)]
        out.append({
            "name": name, "method": method, "what": what, "seeds": seeds,
            "test": [round(float(a), 2) for a in test], "test_mean": round(float(test.mean()), 2),
            "test_std": round(float(test.std(ddof=1)), 2) if len(test) > 1 else None,
            "validation_mean": round(100 * float(np.mean(
                [r["student_validation_accuracy"] for r in reports])), 2),
            "queries": int(np.mean([c[0] for c in costs])),
            "seconds": float(np.mean([c[1] for c in costs])), "reused": any(c[2] for c in costs),
            "reports": [r["path"] for r in reports], "runs": reports})
    return out


def accuracy_cells(row: dict, results_md: str) -> tuple[str, str]:
    """A row's accuracy cell (bold mean ± sample std) and per-seed cell (each linked to its
    report, relative to ``results_md``)."""
    acc = (f"**{row['test_mean']:.2f}**" if row["test_std"] is None
           else f"**{row['test_mean']:.2f} ± {row['test_std']:.2f}**")
    per_seed = ", ".join(f"[{a:.2f}]({os.path.relpath(p, os.path.dirname(results_md))})"
                         for a, p in zip(row["test"], row["reports"]))
    return acc, per_seed


def markdown(summary: list[dict], results_md: str) -> list[str]:
    """The table's lines, each figure linked to its stored report."""
    lines = ["| method | setting | seeds | teacher queries | wall time | student acc. (mean ± sample "
             "std) | per seed | validation acc. (mean) | published |",
             "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in summary:
        acc, per_seed = accuracy_cells(r, results_md)
        mark = " †" if r["reused"] else ""
        lines.append(f"| {r['method']} | {r['what']} | {len(r['seeds'])} | {r['queries']:,}{mark} | "
                     f"{r['seconds'] / 60:.0f} min{mark} | {acc} | "
                     f"{per_seed} | {r['validation_mean']:.2f} | {PUBLISHED.get(r['name'], '-')} |")
    return lines


def plot(summary: list[dict], path: str) -> str | None:
    """Accuracy versus teacher queries (log scale), one point per row, as a PNG at ``path``."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    markers = {"fsbbt": "s", "db3kd": "o", "fsbbt_db3kd": "D", "zsdb3kd": "^"}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in summary:
        ax.errorbar(r["queries"], r["test_mean"], yerr=r["test_std"] or 0, capsize=3,
                    fmt=markers.get(r["method"], "o"), label=f"{r['method']}: {r['what']}")
    ax.axhline(72.31, ls=":", c="gray", lw=1, label="published ZSDB3KD (zero-shot), 72.31")
    ax.axhline(83.92, ls="--", c="gray", lw=1, label="published IDEAL (label-only, data-free), 83.92")
    return finish_plot(plt, fig, ax, path, "Fashion-MNIST, label-only teacher (N = 2000 unless "
                       "zero-shot)", legend=dict(fontsize=6.5, loc="center"))


def finish_plot(plt, fig, ax, path: str, title: str, legend: dict) -> str:
    """Accuracy-versus-queries axes (log x), title, legend; saved to ``path`` (PNG) and closed."""
    ax.set_xscale("log")
    ax.set_xlabel("teacher queries per run (log scale)")
    ax.set_ylabel("student test accuracy, %")
    ax.set_title(title)
    ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _goals(summary: list[dict], soft_reference: tuple[str, float] | None) -> list[str]:
    """The issue's two goals, measured on the 3-seed rows; ``soft_reference`` (what, accuracy) is
    the soft-label FS-BBT figure used when the table has no ``fsbbt_soft`` row."""
    by_name = {r["name"]: r for r in summary}
    if "fsbbt_soft" in by_name:
        soft_reference = ("soft-label FS-BBT, this table", by_name["fsbbt_soft"]["test_mean"])
    label_only = [r for r in summary if r["method"] != "zsdb3kd" and r["name"] != "fsbbt_soft"
                  and len(r["seeds"]) >= 3]
    lines = []
    if soft_reference and label_only:
        best = max(label_only, key=lambda r: r["test_mean"])
        gap = soft_reference[1] - best["test_mean"]
        lines.append(f"- Goal: a label-only student within 1.5 points of soft-label FS-BBT "
                     f"({soft_reference[0]}: {soft_reference[1]:.2f}): the best 3-seed label-only "
                     f"row is {best['method']} ({best['what']}), {best['test_mean']:.2f}, "
                     f"{gap:.2f} points below: {'met' if gap <= 1.5 else 'not met'}.")
    n2000 = [r for r in label_only if r["queries"] <= 2_000_000 and r["method"] == "fsbbt"]
    if n2000:
        best = max(n2000, key=lambda r: r["test_mean"])
        lines.append(f"- Goal (issue 27): a label-only student with N = 2000 at or above 86.5% "
                     f"(DivBFKD's soft-label figure) with at most 2 M queries: the best 3-seed row "
                     f"is {best['what']}, {best['test_mean']:.2f}% with {best['queries']:,} "
                     f"queries ({'met' if best['test_mean'] >= 86.5 else 'not met'}).")
    zero = [r for r in summary if r["method"] == "zsdb3kd"]
    if zero:
        z = max(zero, key=lambda r: r["test_mean"])
        lines.append(f"- Goal: zero-shot zsdb3kd at or above the published 72.31%: "
                     f"{z['test_mean']:.2f}% with {z['queries']:,} queries "
                     f"({'met' if z['test_mean'] >= 72.31 else 'not met'}; {len(z['seeds'])} seed(s)).")
    else:
        lines.append("- Goal: zero-shot zsdb3kd at or above the published 72.31%: no zsdb3kd run "
                     "is stored yet (see below).")
    return lines


def section(results_md: str, soft_reference: tuple[str, float] | None = None,
            reports_dir: str = REPORTS) -> list[str]:
    """RESULTS.md's label-only section (heading, table, goals, picture); [] without reports.
    ``soft_reference``: (what, accuracy %) of the soft-label FS-BBT figure the goal compares with,
    when the label-only table has no row of its own for it."""
    summary = rows(load(reports_dir))
    if not summary:
        return []
    pictures = os.path.join(os.path.dirname(results_md), "benchmarks", "pictures")
    os.makedirs(pictures, exist_ok=True)
    picture = plot(summary, os.path.join(pictures, "fashion_mnist_label_only_accuracy_vs_queries.png"))
    lines = ["## Label-only teacher: DB3KD, ZSDB3KD and one-hot FS-BBT (Fashion-MNIST)", "",
             "Made by `benchmarks/label_only_runs.py` and `benchmarks/label_only_table.py` from the "
             "reports in", "[benchmarks/reports/fashion_mnist_label_only/]"
             "(benchmarks/reports/fashion_mnist_label_only/). The teacher is the table's above",
             "(LeNet-5, 90.75%), served over gRPC and reached only through its label-only view: the",
             "client keeps the top-1 class id of each answer and nothing else (the tests run the same",
             "methods against a `classes`-only export, `tfkd.export.export_label_only`). Student:",
             "LeNet-5-half, batch 64, Adam 1e-3 with cosine decay; 50 epochs with training-time",
             "augmentation (the launcher's default before issue 26), except the rows that say fsbbt's",
             "current recipe (25 epochs, no augmentation); final-epoch weights, full test set;",
             "N = 2000 real images (0 for zsdb3kd). Queries: every",
             "image sent to the teacher (labels, boundary search, pseudo-samples); wall time: every",
             "stage on 2 CPU cores. † search reused from the T = 20 run of the same seed (T acts only",
             "after the search), or for `zsdb3kd_n100k_onehot_noaug` seed 0 the pseudo-samples of",
             "`zsdb3kd_n100k_onehot` seed 0: that run's queries and seconds are charged here.", ""]
    lines += markdown(summary, results_md) + [""] + _goals(summary, soft_reference)
    if picture:
        lines += ["", f"![label-only accuracy vs queries]"
                      f"({os.path.relpath(picture, os.path.dirname(results_md))})"]
    notes = os.path.join(REPO, "benchmarks", "LABEL_ONLY_NOTES.md")
    if os.path.exists(notes):  # Hand-kept: budgets, what the paper's full budget would cost.
        with open(notes) as f:
            lines += ["", f.read().rstrip()]
    return lines


if __name__ == "__main__":
    table = rows(load())
    print("\n".join(markdown(table, os.path.join(REPO, "RESULTS.md"))))
