"""RESULTS.md's "Cost per student" section (issue 28), from stored output only.

- accuracy against teacher queries: the tuned rows of :data:`reproduce.ROWS` under a query budget
  (the plan cut, active rounds, active rounds with a teacher assistant) beside the default recipe's
  full plan, from ``benchmarks/reports/fashion_mnist/row-*.json``;
- the compression table: ``benchmarks/reports/issue38/compression.txt`` (float16 computed in
  float32)
  (``benchmarks/compression.py``);
- labelling throughput: ``benchmarks/reports/issue28/teacher_throughput.txt``
  (``benchmarks/teacher_throughput.py``);
- student training speed beside plain Keras: ``benchmarks/reports/issue28/engine_speed.txt``
  (``benchmarks/engine_speed.py``).

``reproduce.py --write_only`` calls :func:`section`.
"""

import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORED = os.path.join(_REPO, "benchmarks", "reports", "issue28")
# (budget, kind) -> row name; kind: how the budget is spent.
KINDS = {"cut": "plan cut to the budget (active_rounds 0)",
         "active": "4 active rounds, margin",
         "assistant": "random draw + LeNet-5 teacher assistant",
         "active_assistant": "4 active rounds (margin) + LeNet-5 teacher assistant, 30 epochs",
         "assistant_e60": "4 active rounds (margin) + LeNet-5 teacher assistant, 60 epochs (the "
                          "default)"}
BUDGETS = (5_000, 10_000)
FULL_PLAN = "fsbbt_e25_no_augment"
GOALS = {5_000: 86.0, 10_000: 87.0}


def _row_name(budget: int, kind: str) -> str:
    return f"fsbbt_q{budget}_{kind}"


def _cell(row: dict | None, results_md: str) -> str:
    if row is None:
        return "-"
    std = "-" if row["accuracy_std"] is None else f"{row['accuracy_std']:.2f}"
    links = ", ".join(f"[{a:.2f}]({os.path.relpath(os.path.join(_REPO, p), os.path.dirname(results_md))})"
                      for a, p in zip(row["accuracies"], row["reports"]))
    return f"**{row['accuracy_mean']:.2f} ± {std}** ({links}; val {row['validation_accuracy_mean']:.2f})"


def _stored(name: str, results_md: str) -> tuple[list[str], str]:
    path = os.path.join(STORED, name) if "/" not in name else os.path.join(STORED, "..", name)
    if not os.path.exists(path):
        return [], ""
    with open(path) as f:
        text = [line.rstrip() for line in f if line.strip()]
    return text, f"[{name}]({os.path.relpath(path, os.path.dirname(results_md))})"


def queries(tuned: list[dict], results_md: str) -> list[str]:
    by_name = {r["row"]: r for r in tuned}
    full = by_name.get(FULL_PLAN)
    lines = ["### Accuracy against teacher queries", "",
             "Rows of `reproduce.py` (ROWS, `--rows=...`), the default recipe (25 epochs, no "
             "augmentation), LeNet-5 teacher 90.75%, N = 2000, 3 seeds; the student keeps the full "
             "plan's 19,525 optimizer steps. Teacher queries are the transfer set's only: the "
             "teacher's own test accuracy (10,000 queries) is measured once for every table "
             "(`teacher.json`) and its runs set `evaluate_teacher=False`.", "",
             "| teacher queries | " + " | ".join(KINDS.values()) + " | goal |",
             "|---:|" + "---|" * len(KINDS) + "---:|"]
    for budget in BUDGETS:
        cells = [_cell(by_name.get(_row_name(budget, k)), results_md) for k in KINDS]
        lines.append(f"| {budget:,} | " + " | ".join(cells) + f" | {GOALS[budget]:.1f} |")
    if full:
        lines.append(f"| 50,000 (full plan) | {_cell(full, results_md)} |" + " |" * len(KINDS))
    lines.append("")
    for budget in BUDGETS:
        # The mean of the stored per-seed figures, unrounded: a goal is met or not to the digit.
        measured = [(sum(by_name[_row_name(budget, k)]["accuracies"])
                     / len(by_name[_row_name(budget, k)]["accuracies"]), KINDS[k]) for k in KINDS
                    if _row_name(budget, k) in by_name]
        if measured:
            best, what = max(measured)
            verdict = "met" if best >= GOALS[budget] else f"not met, {GOALS[budget] - best:.3f} short"
            lines.append(f"- Goal >= {GOALS[budget]:.1f}% with <= {budget:,} queries: best "
                         f"{best:.3f}% ({what}): **{verdict}**.")
    return lines


def stored_blocks(results_md: str) -> list[str]:
    lines = []
    for name, title, what in (
            ("issue38/compression.txt", "### Compressed students",
             "Bytes on disk of each export format's version directory, top-1 accuracy served over "
             "gRPC by tfkd's server, in-process latency (median ms) at batch 1 and 64 and the "
             "served round trip at batch 1; int8 is the LiteRT full-integer model (`tfkd.export.litert`)."),
            ("teacher_throughput.txt", "### Labelling throughput",
             "Images/s labelled over loopback gRPC (tfkd's server in its own process, request "
             "batching off and on) beside in-process prediction of the same SavedModel, in one run."),
            ("engine_speed.txt", "### Student training speed beside plain Keras",
             "Images/s of tfkd's trainer and of a plain Keras `fit` of the same model and recipe "
             "(the reference implementation's pipeline), interleaved in one process.")):
        text, link = _stored(name, results_md)
        link = link.replace(f"[{name}]", f"[{os.path.basename(name)}]")
        if text:
            lines += [title, "", f"{what} Stored output: {link}.", "", "```", *text, "```", ""]
    return lines


def section(results_md: str, tuned: list[dict]) -> list[str]:
    """The section's markdown lines ([] when nothing is stored)."""
    body = queries(tuned, results_md) + [""] + stored_blocks(results_md)
    return ["## Cost per student (issue 28)", "", *body]
