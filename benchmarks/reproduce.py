r"""Reproduces the FS-BBT results table: dataset x method x seed, then RESULTS.md and results.json.

One teacher per dataset is trained once (the black box; LeNet-5 for Fashion-MNIST) into
`<grid_dir>/<dataset>/teacher/` and served on a loopback port for the whole grid; every cell is a full
`tfkd.pipeline.run_fsbbt` run in `<grid_dir>/<dataset>/<method>/seed<k>/` reaching the teacher over
gRPC and measuring the exported student over gRPC on the full test set (final-epoch weights: no
checkpoint is selected on the test set). A cell whose report.json exists is not run again, so a
partly finished grid resumes.

  python benchmarks/reproduce.py --dataset=fashion_mnist
  python benchmarks/reproduce.py --dataset=fashion_mnist --methods=fsbbt --seeds=0,1,2
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfkd import data  # noqa: E402
from tfkd import distill  # noqa: E402
from tfkd import export  # noqa: E402
from tfkd import pipeline  # noqa: E402
from tfkd import serving  # noqa: E402
from tfkd import teacher as teacher_lib  # noqa: E402

flags.DEFINE_enum("dataset", "fashion_mnist", list(data.SUPPORTED_DATASETS), "Dataset.")
flags.DEFINE_list("methods", list(pipeline.METHODS), "Methods (rows).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds per method.")
flags.DEFINE_string("grid_dir", os.path.join(_REPO, "runs", "reproduce"), "Where the runs live.")
flags.DEFINE_string("results_md", os.path.join(_REPO, "RESULTS.md"), "The table written.")
flags.DEFINE_string("results_json", os.path.join(_REPO, "benchmarks", "results.json"),
                    "The same rows as data.")
flags.DEFINE_integer("student_epochs", 50, "Student epochs (the paper: 50).")
FLAGS = flags.FLAGS

# FS-BBT (Nguyen et al., ECCV 2022) Tables 1-2: teacher, and student accuracy per method.
PAPER = {
    "fashion_mnist": {"teacher": 90.15, "student_alone": 81.37, "fsbbt": 84.73},
    "mnist": {"teacher": 99.18, "student_alone": 95.97, "fsbbt": 98.42},
    "cifar10": {"teacher": 84.07, "student_alone": 54.59, "fsbbt": 74.10},
    "cifar100": {"teacher": 69.08, "student_alone": 32.85, "fsbbt": 56.28},
}
GPU_COMMANDS = {
    name: f"python benchmarks/reproduce.py --dataset={name}" for name in ("mnist", "cifar10", "cifar100")
}


def run_grid(dataset_name: str, methods, seeds) -> list[dict]:
    root = os.path.join(FLAGS.grid_dir, dataset_name)
    teacher_base = os.path.join(root, "teacher")
    dataset = data.load_dataset(dataset_name)
    if export.latest_version_dir(teacher_base) is None:
        logging.info("Training the teacher into %s", teacher_base)
        pipeline.train_and_export_teacher(dataset, pipeline.TeacherTrainConfig(), teacher_base,
                                          seed=0, verbose=2)
    reports = []
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0) as srv:
        for method in methods:
            for seed in seeds:
                workdir = os.path.join(root, method, f"seed{seed}")
                path = os.path.join(workdir, "report.json")
                if not os.path.exists(path):
                    logging.info("Running %s seed %d in %s", method, seed, workdir)
                    start = time.perf_counter()
                    pipeline.run_fsbbt(pipeline.FSBBTConfig(
                        workdir=workdir, method=method, dataset=dataset_name, seed=seed,
                        teacher=teacher_lib.TeacherConfig(target=srv.target),
                        student=distill.StudentConfig(epochs=FLAGS.student_epochs),
                        compress=(), verbose=0))
                    logging.info("%s seed %d: %.0f s", method, seed, time.perf_counter() - start)
                    keras.backend.clear_session()  # Runs slowed down 50% over a grid without it.
                with open(path) as f:
                    reports.append(json.load(f))
    return reports


def summarize(reports: list[dict]) -> list[dict]:
    rows = []
    for method in dict.fromkeys(r["method"] for r in reports):
        runs = [r for r in reports if r["method"] == method]
        acc = np.array([r["student_accuracy"] for r in runs]) * 100
        stages = {}
        for r in runs:
            for k, v in r["stage_seconds"].items():
                stages.setdefault(k, []).append(v)
        rows.append({
            "dataset": runs[0]["dataset"], "method": method, "seeds": [r["seed"] for r in runs],
            "accuracy_mean": round(float(acc.mean()), 2), "accuracy_std": round(float(acc.std()), 2),
            "accuracies": [round(float(a), 2) for a in acc],
            "teacher_queries": int(np.mean([r["teacher_queries_sent"] + r["teacher_ledger_hits"]
                                            for r in runs])),
            "teacher_accuracy": round(100 * float(np.mean([r["teacher_accuracy"] for r in runs])), 2),
            "num_shots": runs[0]["num_shots"], "num_mixup": runs[0]["num_mixup"],
            "num_cvae": runs[0]["num_cvae"],
            "stage_seconds": {k: round(float(np.mean(v)), 1) for k, v in stages.items()},
            "paper_accuracy": PAPER.get(runs[0]["dataset"], {}).get(method),
        })
    return rows


def write_plot(rows: list[dict], path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # Optional: `pip install matplotlib` for the picture.
        logging.warning("matplotlib is not installed: no accuracy-versus-queries plot")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        ax.errorbar(row["teacher_queries"], row["accuracy_mean"], yerr=row["accuracy_std"],
                    fmt="o", capsize=3, label=row["method"])
    paper = PAPER.get(rows[0]["dataset"], {})
    if "fsbbt" in paper:
        ax.axhline(paper["fsbbt"], ls="--", c="gray", lw=1, label="paper FS-BBT")
    ax.set_xlabel("teacher queries")
    ax.set_ylabel("student test accuracy, % (mean ± std)")
    ax.set_title(f"{rows[0]['dataset']}: accuracy vs teacher queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_markdown(rows: list[dict], path: str, plot: str | None, grids: dict) -> None:
    lines = ["# Results", "",
             "Generated by `python benchmarks/reproduce.py` (2 CPU cores, no GPU). Student accuracy is",
             "measured on the full test set by serving the exported student over gRPC, final-epoch",
             "weights (no checkpoint selected on the test set); mean ± std over seeds.", ""]
    lines += ["| dataset | method | teacher acc. | N | MixUp | CVAE | teacher queries | student acc. "
              "(mean ± std) | per seed | paper | student training s | total s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        paper = "-" if r["paper_accuracy"] is None else f"{r['paper_accuracy']:.2f}"
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['teacher_accuracy']:.2f} | {r['num_shots']} | "
            f"{r['num_mixup']} | {r['num_cvae']} | {r['teacher_queries']:,} | "
            f"**{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}** | "
            f"{', '.join(f'{a:.2f}' for a in r['accuracies'])} | {paper} | "
            f"{r['stage_seconds'].get('student_training', 0):.0f} | "
            f"{sum(r['stage_seconds'].values()):.0f} |")
    lines += ["", "Paper (FS-BBT, Nguyen et al. 2022): teacher / student alone / FS-BBT per dataset: " +
              "; ".join(f"{d} {p['teacher']} / {p['student_alone']} / {p['fsbbt']}"
                        for d, p in PAPER.items()), ""]
    lines += ["Other datasets need data this machine does not have (offline); on an online GPU node:", ""]
    lines += [f"- {d}: `{c}`" for d, c in GPU_COMMANDS.items()]
    if plot:
        lines += ["", f"![accuracy vs teacher queries]({os.path.relpath(plot, os.path.dirname(path))})"]
    for name, grid in grids.items():
        lines += ["", f"{name} images, one row per teacher class: "
                      f"![{name}]({os.path.relpath(grid, os.path.dirname(path))})"]
    notes = os.path.join(_REPO, "benchmarks", "RESULTS_NOTES.md")
    if os.path.exists(notes):  # The hand-kept log of tries, ablations and speed figures.
        with open(notes) as f:
            lines += ["", f.read().rstrip()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
    del argv
    methods = [m for m in FLAGS.methods]
    for m in methods:
        if m not in pipeline.METHODS:
            raise app.UsageError(f"--methods: {m!r} is not one of {pipeline.METHODS}")
    seeds = [int(s) for s in FLAGS.seeds]
    try:
        reports = run_grid(FLAGS.dataset, methods, seeds)
    except data.DatasetUnavailableError as e:
        sys.exit(f"error: {e}\nRun this on an online GPU node: {GPU_COMMANDS.get(FLAGS.dataset)}")
    rows = summarize(reports)
    os.makedirs(os.path.dirname(FLAGS.results_json), exist_ok=True)
    with open(FLAGS.results_json, "w") as f:
        json.dump(rows, f, indent=2)
    pictures = os.path.join(os.path.dirname(FLAGS.results_md), "benchmarks", "pictures")
    os.makedirs(pictures, exist_ok=True)
    plot = write_plot(rows, os.path.join(pictures, f"{FLAGS.dataset}_accuracy_vs_queries.png"))
    grids = {}
    fsbbt = [r for r in reports if r["method"] == "fsbbt"]
    if fsbbt:
        for name, src in fsbbt[0].get("grids", {}).items():
            dst = os.path.join(pictures, f"{FLAGS.dataset}_grid_{name}.png")
            with open(src, "rb") as fi, open(dst, "wb") as fo:
                fo.write(fi.read())
            grids[name] = dst
    write_markdown(rows, FLAGS.results_md, plot, grids)
    for r in rows:
        print(f"{r['method']:>14}: {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} "
              f"({r['teacher_queries']:,} queries; paper {r['paper_accuracy']})", flush=True)


if __name__ == "__main__":
    app.run(main)
