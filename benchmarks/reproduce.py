r"""Reproduces the FS-BBT results table from runs, then writes RESULTS.md from their stored reports.

Every figure in RESULTS.md comes from a `report.json` stored under `benchmarks/reports/<dataset>/`
(committed), copied there from the run that made it in `<grid_dir>/<dataset>/...`. Steps:

1. **Teacher recipes** (the teacher owner's choice): each recipe of `TEACHER_TRIES` is trained on the
   training split less the validation split and measured on the validation split only; the best one
   by validation accuracy is the grid's teacher. Its test accuracy is then measured once, over gRPC.
2. **Grid**: method x seed, each a full `tfkd.pipeline.run` reaching the teacher over gRPC, the
   exported student measured over gRPC on the full test set once (final-epoch weights; nothing is
   selected on the test set) and on the validation split.
3. **Student tries** (`STUDENT_TRIES`): recipes compared with the method's seed-0 cell on the
   validation split only (the test split is not read in those runs).

A step whose report exists is not run again, so an interrupted grid resumes.

  python benchmarks/reproduce.py --dataset=fashion_mnist
  python benchmarks/reproduce.py --dataset=fashion_mnist --methods=fsbbt --seeds=0,1,2
  python benchmarks/reproduce.py --write_only   # RESULTS.md from the stored reports, no runs
"""

import dataclasses
import glob
import json
import os
import re
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import cost_table  # noqa: E402  (benchmarks/, beside this script)
import frontier_table  # noqa: E402  (benchmarks/, beside this script)
import images_vs_idx  # noqa: E402
import keras  # noqa: E402
import label_only_table  # noqa: E402  (benchmarks/, beside this script)
import numpy as np  # noqa: E402
import report_dates  # noqa: E402  (benchmarks/, beside this script)
import time_to_accuracy  # noqa: E402
import zero_shot_table  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfkd import data  # noqa: E402
from tfkd import errors  # noqa: E402
from tfkd import outputs  # noqa: E402
from tfkd import pipeline  # noqa: E402
from tfkd import serving  # noqa: E402
from tfkd import student as student_lib  # noqa: E402
from tfkd import teacher as teacher_lib  # noqa: E402
from tfkd import teacher_setup  # noqa: E402
from tfkd import workdir as workdir_lib  # noqa: E402
from tfkd.methods import fsbbt as fsbbt_methods  # noqa: E402
from tfkd.teacher import client as client_lib  # noqa: E402

flags.DEFINE_enum("dataset", "fashion_mnist", list(data.SUPPORTED_DATASETS), "Dataset.")
flags.DEFINE_list("methods", list(fsbbt_methods.METHODS), "Methods (rows).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds per method.")
flags.DEFINE_list("student_tries", None, "Names of STUDENT_TRIES to run (default: all; empty: "
                  "none).")
flags.DEFINE_list("rows", None, "Names of ROWS (the tuned table) to run (default: all; empty: "
                  "none).")
flags.DEFINE_string("grid_dir", os.path.join(_REPO, "runs", "reproduce"), "Where the runs live.")
flags.DEFINE_string("reports_dir", os.path.join(_REPO, "benchmarks", "reports"),
                    "Where the reports are stored (committed); RESULTS.md is made from these.")
flags.DEFINE_string("results_md", os.path.join(_REPO, "RESULTS.md"), "The table written.")
flags.DEFINE_string("results_json", os.path.join(_REPO, "benchmarks", "results.json"),
                    "The same rows as data.")
flags.DEFINE_integer("num_validation", 5000, "Validation split (training images held out).")
flags.DEFINE_bool("write_only", False, "Only write RESULTS.md and results.json from the stored "
                  "reports.")
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

# Teacher recipes for LeNet-5 datasets, chosen on the validation split (name -> (config, what)).
TEACHER_TRIES = {
    "lenet5_same_cosine": (pipeline.TeacherTrainConfig(),
                           "LeNet-5, conv1 padded (\"same\"), Adam 1e-3 with cosine decay, 20 epochs"),
    "lenet5_same_constant": (pipeline.TeacherTrainConfig(lr_schedule="constant"),
                             "LeNet-5, conv1 padded, Adam 1e-3 constant, 20 epochs"),
    "lenet5_valid_cosine": (pipeline.TeacherTrainConfig(architecture="lenet5_valid"),
                            "LeNet-5, conv1 unpadded (\"valid\"), cosine decay, 20 epochs"),
    "lenet5_valid_constant": (pipeline.TeacherTrainConfig(architecture="lenet5_valid",
                                                          lr_schedule="constant"),
                              "LeNet-5, conv1 unpadded, Adam 1e-3 constant, 20 epochs"),
}
# The grid's student recipe for every method: the paper's, fixed in advance (the launcher's default
# differs where a try below was adopted).
PAPER_STUDENT = student_lib.StudentConfig(lr_schedule="constant")

# Student recipes tried against the method's cell of the same seed, on the validation split only
# (name -> (method, StudentConfig fields, what, seed)).
_NO_AUGMENT = (("mixup_alpha", 0.0), ("rotation_degrees", 0.0), ("shift_fraction", 0.0))
_E100 = {"lr_schedule": "cosine", "epochs": 100}  # fsbbt's launcher default since row fsbbt_e100
_COSINE = "FS-BBT, student Adam 1e-3 with cosine decay instead of the paper's constant"
STUDENT_TRIES = {
    "fsbbt_cosine_lr": ("fsbbt", {"lr_schedule": "cosine"}, _COSINE, 0),
    "fsbbt_cosine_lr_seed1": ("fsbbt", {"lr_schedule": "cosine"}, _COSINE, 1),
    "fsbbt_cosine_lr_seed2": ("fsbbt", {"lr_schedule": "cosine"}, _COSINE, 2),
    # Issue 13: time to accuracy (fewer, larger steps) and the baselines' training length.
    "fsbbt_b256_lr2e-3_e25": ("fsbbt", {"lr_schedule": "cosine", "batch_size": 256,
                                        "learning_rate": 2e-3, "epochs": 25},
                              "FS-BBT, cosine, batch 256, Adam 2e-3, 25 epochs (a quarter of the "
                              "steps, half the image passes)", 0),
    "fsbbt_kd_t4": ("fsbbt", {"lr_schedule": "cosine", "loss": "kd", "temperature": 4.0},
                    "FS-BBT, cosine, KD loss at temperature T = 4 on the teacher's probabilities",
                    0),
    "student_alone_e200": ("student_alone", {"lr_schedule": "cosine", "epochs": 200},
                           "student alone, cosine, 200 epochs (6,200 steps)", 0),
    "standard_kd_e200": ("standard_kd", {"lr_schedule": "cosine", "epochs": 200},
                         "standard KD, cosine, 200 epochs (6,200 steps)", 0),
    "student_alone_e800": ("student_alone", {"lr_schedule": "cosine", "epochs": 800},
                           "student alone, cosine, 800 epochs (24,800 steps)", 0),
    "standard_kd_e800": ("standard_kd", {"lr_schedule": "cosine", "epochs": 800},
                         "standard KD, cosine, 800 epochs (24,800 steps)", 0),
    "fsbbt_e100": ("fsbbt", {"lr_schedule": "cosine", "epochs": 100},
                   "FS-BBT, cosine, batch 64, 100 epochs (twice the default's steps)", 0),
    # Issue 13, on top of fsbbt's 100-epoch default (compared with the try fsbbt_e100).
    "fsbbt_e100_kd_t4": ("fsbbt", {**_E100, "loss": "kd", "temperature": 4.0},
                         "FS-BBT, 100 epochs, KD loss at T = 4 on the teacher's probabilities", 0),
    "fsbbt_e100_flip": ("fsbbt", {**_E100, "horizontal_flip": True},
                        "FS-BBT, 100 epochs, random horizontal flips of the training images", 0),
    "fsbbt_e100_no_train_mixup": ("fsbbt", {**_E100, "mixup_alpha": 0.0},
                                  "FS-BBT, 100 epochs, no training-time MixUp (α = 0)", 0),
    "fsbbt_e100_ema": ("fsbbt", {**_E100, "ema_momentum": 0.999},
                       "FS-BBT, 100 epochs, exported weights averaged (EMA, momentum 0.999)", 0),
    "fsbbt_e100_wd": ("fsbbt", {**_E100, "weight_decay": 1e-4},
                      "FS-BBT, 100 epochs, Adam with decoupled weight decay 1e-4", 0),
    "fsbbt_e100_no_augment": ("fsbbt", {**_E100, "mixup_alpha": 0.0, "rotation_degrees": 0.0,
                                        "shift_fraction": 0.0},
                              "FS-BBT, 100 epochs, no training-time augmentation at all (no MixUp, "
                              "rotation or shift)", 0),
    # Shorter and longer training without augmentation (compared with fsbbt_e100_no_augment).
    **{f"fsbbt_e{e}_no_augment": ("fsbbt", {**_E100, **dict(_NO_AUGMENT), "epochs": e},
                                  f"FS-BBT, {e} epochs, no training-time augmentation", 0)
       for e in (25, 50)},
    "fsbbt_e200": ("fsbbt", {**_E100, "epochs": 200},
                   "FS-BBT, cosine, batch 64, 200 epochs (DivBFKD's student length)", 0),
}


# What became of each student try (the grid's recipe is the paper's, fixed in advance).
_ADOPTED = ("adopted as the launcher's default student schedule (better on validation in all three "
            "seeds); the table keeps the paper's constant rate for every method")
STUDENT_TRY_STATUS = {name: _ADOPTED for name in STUDENT_TRIES if name.startswith("fsbbt_cosine_lr")}


# A try compared with another stored report than its method's grid cell (the default recipe).
TRY_COMPARED_WITH = {"fsbbt_b256_lr2e-3_e25": "student_try-fsbbt_cosine_lr",
                     "fsbbt_kd_t4": "student_try-fsbbt_cosine_lr",
                     "fsbbt_e100": "student_try-fsbbt_cosine_lr",
                     **{name: "student_try-fsbbt_e100" for name in (
                         "fsbbt_e100_kd_t4", "fsbbt_e100_flip", "fsbbt_e100_no_train_mixup",
                         "fsbbt_e200", "fsbbt_e100_ema", "fsbbt_e100_wd",
                         "fsbbt_e100_no_augment")},
                     **{f"fsbbt_e{e}_no_augment": "student_try-fsbbt_e100_no_augment"
                        for e in (25, 50)}}
STUDENT_TRY_STATUS.update({
    "fsbbt_e100_no_train_mixup": "not adopted: no augmentation at all was better "
                                 "(fsbbt_e100_no_augment)",
    "fsbbt_e100_no_augment": "run with 3 seeds as the row fsbbt_e100_no_augment (and LeNet-5); "
                             "adopted: fsbbt's default has no training-time augmentation",
    "fsbbt_e25_no_augment": "within 0.2 at a quarter of the time: run with 3 seeds as the row "
                            "fsbbt_e25_no_augment; adopted as fsbbt's default length (rule in the "
                            "notes)",
    "fsbbt_e50_no_augment": "not adopted: 25 and 100 epochs were run as rows",
    "fsbbt_e200": "not adopted: no training-time augmentation gained more (fsbbt_e100_no_augment)",
    "fsbbt_e100_wd": "not adopted: within one seed's noise, not tried further",
    "fsbbt_e100_flip": "not adopted",
    "fsbbt_e100_kd_t4": "not adopted",
    "fsbbt_e100_ema": "not adopted: no gain (the cosine rate ends at 0, so the average is the last "
                      "weights)",
    "fsbbt_b256_lr2e-3_e25": "not adopted: the default keeps batch 64 for 50 epochs",
    "fsbbt_e100": "run with 3 seeds as the tuned table's row fsbbt_e100; adopted as fsbbt's default",
    "student_alone_e200": "adopted for the tuned baselines (ROWS)",
    "standard_kd_e200": "adopted for the tuned baselines (ROWS)",
})


@dataclasses.dataclass(frozen=True)
class Row:
    """A row of the tuned table (issue 13): a method, its student recipe and a query budget.

    Attributes:
      method: a name of ``fsbbt_methods.METHODS``.
      what: the row's description in RESULTS.md.
      student: StudentConfig fields over the launcher's default (``student_lib.StudentConfig()``).
      query_budget: the run's ``--query_budget`` (None: the full plan, 50,000 queries).
      settings: other DistillConfig settings by dotted name (``DistillConfig.with_settings``),
        e.g. ``(("active.rounds", 0),)``.
    """

    method: str
    what: str
    student: tuple = ()
    query_budget: int | None = None
    settings: tuple = ()


# The baselines' recipe, fixed in advance from the tries below (validation split): the paper's
# batch and rate, a cosine decay, and 200 epochs over the N images.
_BASELINE = (("batch_size", 64), ("learning_rate", 1e-3), ("epochs", 200))
ROWS = {
    "student_alone_tuned": Row("student_alone", "student alone, tuned: 200 epochs, batch 64, "
                               "Adam 1e-3 cosine", _BASELINE),
    "standard_kd_tuned": Row("standard_kd", "standard KD, tuned: 200 epochs, batch 64, Adam 1e-3 "
                             "cosine", _BASELINE),
    "fsbbt_default": Row("fsbbt", "FS-BBT, the launcher's default recipe until row fsbbt_e100 "
                         "(50 epochs)"),
    "fsbbt_q25000": Row("fsbbt", "FS-BBT, default recipe, plan cut to 25,000 queries",
                        query_budget=25_000),
    "fsbbt_q10000": Row("fsbbt", "FS-BBT, default recipe, plan cut to 10,000 queries",
                        query_budget=10_000),
    "fsbbt_q10000_streamed": Row("fsbbt", "FS-BBT, plan cut to 10,000 queries, rerun after the "
                                 "per-epoch fix (the student streamed in 50 chunks)",
                                 query_budget=10_000),
    "fsbbt_default_rerun": Row("fsbbt", "FS-BBT, the 50-epoch recipe, rerun on the day of the row "
                               "above, one after the other (its time comparable with that row's)"),
    "fsbbt_q5000": Row("fsbbt", "FS-BBT, default recipe, plan cut to 5,000 queries",
                       query_budget=5_000),
    "fsbbt_lenet5": Row("fsbbt", "FS-BBT, default recipe, same-size student (LeNet-5, the "
                        "paper's FS-BBT*)", (("architecture", "lenet5"),)),
    # From the try fsbbt_e100 (validation +0.74 over the default recipe, seed 0).
    "fsbbt_e100": Row("fsbbt", "FS-BBT, 100 epochs (twice the steps): fsbbt's launcher default "
                      "from this row (better on validation in 3 of 3 seeds) to fsbbt_e100_no_augment",
                      (("epochs", 100),)),
    "fsbbt_lenet5_e100": Row("fsbbt", "FS-BBT, same-size student (LeNet-5) at fsbbt's 100-epoch "
                             "default", (("architecture", "lenet5"), ("epochs", 100))),
    # From the try fsbbt_e100_no_augment (validation, seed 0; better than fsbbt_e100_no_train_mixup).
    "fsbbt_e100_no_augment": Row("fsbbt", "FS-BBT, 100 epochs, no training-time augmentation "
                                 "(better on validation than fsbbt_e100 in 3 of 3 seeds): fsbbt's "
                                 "launcher default from this row to fsbbt_e25_no_augment",
                                 (("epochs", 100), *_NO_AUGMENT)),
    "fsbbt_lenet5_e100_no_augment": Row("fsbbt", "FS-BBT, same-size student (LeNet-5), 100 epochs, "
                                        "no training-time augmentation",
                                        (("architecture", "lenet5"), ("epochs", 100), *_NO_AUGMENT)),
    "fsbbt_e25_no_augment": Row("fsbbt", "FS-BBT, 25 epochs, no training-time augmentation: "
                                "fsbbt's launcher default since this row (rule in the notes)",
                                (("epochs", 25), *_NO_AUGMENT)),
    # Issue 28: the query curve of the default recipe (25 epochs, no augmentation): the budget
    # cuts the plan (active.rounds 0, the behaviour before issue 28) or buys the pool's images
    # chosen in rounds (tfkd.methods.fsbbt.active).
    "fsbbt_q5000_cut": Row("fsbbt", "FS-BBT default recipe, plan cut to 5,000 queries",
                           query_budget=5_000, settings=(("active.rounds", 0),)),
    "fsbbt_q10000_cut": Row("fsbbt", "FS-BBT default recipe, plan cut to 10,000 queries",
                            query_budget=10_000, settings=(("active.rounds", 0),)),
    "fsbbt_q5000_active": Row("fsbbt", "FS-BBT default recipe, 5,000 queries chosen in 4 "
                              "active rounds (margin) from the 48,000-image pool",
                              query_budget=5_000),
    "fsbbt_q10000_active": Row("fsbbt", "FS-BBT default recipe, 10,000 queries chosen in 4 "
                               "active rounds (margin) from the 48,000-image pool",
                               query_budget=10_000),
    # The probe (validation, seed 0): 87.08 -> 87.64 with a LeNet-5 assistant labelling the rest.
    "fsbbt_q10000_assistant": Row("fsbbt", "FS-BBT default recipe, 10,000 queries drawn at random "
                                  "from the pool; a LeNet-5 teacher assistant (30 epochs on them) "
                                  "labels the other 38,000 pool images",
                                  query_budget=10_000,
                                  settings=(("active.selection", "random"),
                                            ("active.assistant", "lenet5"))),
    "fsbbt_q10000_active_assistant": Row("fsbbt", "FS-BBT default recipe, 10,000 queries "
                                         "chosen in 4 active rounds (margin); a LeNet-5 teacher "
                                         "assistant labels the other 38,000 pool images",
                                         query_budget=10_000,
                                         settings=(("active.assistant", "lenet5"),)),
    "fsbbt_q5000_active_assistant": Row("fsbbt", "FS-BBT default recipe, 5,000 queries chosen "
                                        "in 4 active rounds (margin); a LeNet-5 teacher "
                                        "assistant labels the other 45,000 pool images",
                                        query_budget=5_000,
                                        settings=(("active.assistant", "lenet5"),)),
    "fsbbt_q10000_assistant_e60": Row("fsbbt", "FS-BBT default recipe (margin rounds + teacher "
                                      "assistant), the assistant trained 60 epochs instead of 30",
                                      query_budget=10_000,
                                      settings=(("active.assistant", "lenet5"),
                                                ("active.assistant_epochs", 60))),
    "fsbbt_q5000_assistant_e60": Row("fsbbt", "FS-BBT default recipe (margin rounds + teacher "
                                     "assistant), the assistant trained 60 epochs instead of 30",
                                     query_budget=5_000,
                                     settings=(("active.assistant", "lenet5"),
                                               ("active.assistant_epochs", 60))),
    "fsbbt_q5000_assistant": Row("fsbbt", "FS-BBT default recipe, 5,000 queries drawn at random "
                                 "from the pool; a LeNet-5 teacher assistant labels the other "
                                 "45,000", query_budget=5_000,
                                 settings=(("active.selection", "random"),
                                           ("active.assistant", "lenet5"))),
}
# Published figures for the tuned table (same setting: LeNet-5 teacher, N = 2000).
_SAME_SIZE = (("FS-BBT*", 86.53), ("DivBFKD", 87.65))
_HALF = (("FS-BBT paper", 84.73), ("DivBFKD, ECML-PKDD 2024", 86.50))
PUBLISHED = {"student_alone_tuned": (("FS-BBT paper, student alone", 81.37),),
             "fsbbt_default": _HALF, "fsbbt_e100_no_augment": _HALF, "fsbbt_e25_no_augment": _HALF,
             "fsbbt_lenet5": _SAME_SIZE, "fsbbt_lenet5_e100": _SAME_SIZE,
             "fsbbt_lenet5_e100_no_augment": _SAME_SIZE}



def images_of(report: dict, source: str) -> int:
    """Transfer-set images from ``source`` (``mixup``, ``cvae``) in a stored report: its
    ``transfer_set_sources``, or the ``num_<source>`` field reports had before issue 36."""
    return report.get("transfer_set_sources", {}).get(source, report.get(f"num_{source}", 0))

def _store(report_path: str, name: str) -> str:
    """Copies a run's report.json into the committed reports dir; returns the stored path."""
    dst = os.path.join(FLAGS.reports_dir, FLAGS.dataset, name + ".json")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(report_path, dst)
    return dst


def choose_teacher(root: str, dataset: data.Dataset) -> str:
    """Step 1: trains each teacher recipe (validation only), returns the chosen one's base dir."""
    scores = {}
    for name, (config, what) in TEACHER_TRIES.items():
        run = os.path.join(root, "teacher_tries", name)
        path = os.path.join(run, "report.json")
        if not os.path.exists(path):
            logging.info("Teacher recipe %s", name)
            keras.utils.set_random_seed(0)
            start = time.perf_counter()
            trained = teacher_setup.train_and_export_teacher(
                dataset, config.resolved(dataset.name), os.path.join(run, "teacher"), seed=0,
                verbose=2, evaluate_test=False)
            workdir_lib.write_json(path, {
                "kind": "teacher_try", "try": name, "what": what, "dataset": dataset.name,
                "recipe": dataclasses.asdict(config), "num_train": len(dataset.x_train),
                "num_validation": len(dataset.x_val),
                "validation_accuracy": trained["validation_accuracy"],
                "parameters": trained["parameters"], "export_dir": trained["export_dir"],
                "seconds": round(time.perf_counter() - start, 1),
                "code_commit": outputs.code_commit()})
            keras.backend.clear_session()
        with open(path) as f:
            scores[name] = json.load(f)["validation_accuracy"]
        _store(path, f"teacher_try-{name}")
    chosen = max(scores, key=scores.get)
    logging.info("Teacher recipe chosen on the validation split: %s (%.4f)", chosen, scores[chosen])
    return os.path.join(root, "teacher_tries", chosen, "teacher")


def measure_teacher(root: str, teacher_base: str, dataset: data.Dataset, target: str) -> dict:
    """The chosen teacher's test accuracy, measured once over gRPC (not per cell)."""
    path = os.path.join(root, "teacher_report.json")
    if not os.path.exists(path):
        with client_lib.connect(target, "teacher", role="teacher") as client:
            accuracy = client_lib.accuracy(client, dataset.x_test, dataset.y_test)
        workdir_lib.write_json(path, {"kind": "teacher", "dataset": dataset.name, "base": teacher_base,
                           "test_accuracy": accuracy, "test_examples": len(dataset.x_test),
                           "teacher_eval_queries": len(dataset.x_test),
                           "code_commit": outputs.code_commit()})
    _store(path, "teacher")
    with open(path) as f:
        return json.load(f)


def run_cell(workdir: str, target: str, method: str, seed: int, student=None,
             evaluate_test: bool = True, query_budget: int | None = None,
             settings: tuple = ()) -> str:
    path = os.path.join(workdir, "report.json")
    if not os.path.exists(path):
        logging.info("Running %s seed %d in %s", method, seed, workdir)
        start = time.perf_counter()
        pipeline.run(pipeline.DistillConfig(
            workdir=workdir, method=method, dataset=FLAGS.dataset, seed=seed,
            num_validation=FLAGS.num_validation,
            teacher=teacher_lib.TeacherConfig(target=target, query_budget=query_budget),
            student=student or PAPER_STUDENT, evaluate_test=evaluate_test,
            evaluate_teacher=False, compress=(), verbose=0).with_settings(dict(settings)))
        logging.info("%s seed %d: %.0f s", method, seed, time.perf_counter() - start)
        keras.backend.clear_session()  # Runs slowed down 50% over a grid without it.
    return path


def run_all(methods, seeds) -> None:
    root = os.path.join(FLAGS.grid_dir, FLAGS.dataset)
    dataset = data.with_validation_split(data.load_dataset(FLAGS.dataset), FLAGS.num_validation)
    teacher_base = choose_teacher(root, dataset)
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0) as srv:
        measure_teacher(root, teacher_base, dataset, srv.target)
        for method in methods:
            for seed in seeds:
                path = run_cell(os.path.join(root, method, f"seed{seed}"), srv.target, method, seed)
                _store(path, f"{method}-seed{seed}")
        for name in STUDENT_TRIES if FLAGS.student_tries is None else FLAGS.student_tries:
            method, fields, _, seed = STUDENT_TRIES[name]
            path = run_cell(os.path.join(root, "tries", name), srv.target, method, seed,
                            dataclasses.replace(PAPER_STUDENT, **fields), evaluate_test=False)
            report = json.load(open(path))
            report.update(kind="student_try", **{"try": name})
            workdir_lib.write_json(path, report)
            _store(path, f"student_try-{name}")
        for name in ROWS if FLAGS.rows is None else FLAGS.rows:
            row = ROWS[name]
            for seed in seeds:
                path = run_cell(os.path.join(root, "rows", name, f"seed{seed}"), srv.target,
                                row.method, seed,
                                dataclasses.replace(student_lib.StudentConfig(), **dict(row.student)),
                                query_budget=row.query_budget, settings=row.settings)
                report = json.load(open(path))
                report.update(kind="row", row=name)
                workdir_lib.write_json(path, report)
                _store(path, f"row-{name}-seed{seed}")


# ------------------------------------------------------------------ RESULTS.md from stored reports
def load_reports(dataset: str) -> dict[str, dict]:
    """Stored report name (file stem) -> report, with its path under ``path``."""
    reports = {}
    for path in sorted(glob.glob(os.path.join(FLAGS.reports_dir, dataset, "*.json"))):
        with open(path) as f:
            reports[os.path.splitext(os.path.basename(path))[0]] = json.load(f) | {"path": path}
    return reports


def summarize(reports: dict[str, dict]) -> list[dict]:
    """One row per method over its seeds; std is the sample standard deviation (ddof = 1)."""
    cells = [r for r in reports.values() if r.get("method") and r.get("kind") is None]
    teacher = reports.get("teacher", {})
    rows = []
    for method in [m for m in fsbbt_methods.METHODS if any(r["method"] == m for r in cells)]:
        runs = sorted((r for r in cells if r["method"] == method), key=lambda r: r["seed"])
        acc = np.array([r["student_accuracy"] for r in runs]) * 100
        val = np.array([r["student_validation_accuracy"] for r in runs]) * 100
        stages = {}
        for r in runs:
            for k, v in r["stage_seconds"].items():
                stages.setdefault(k, []).append(v)
        rows.append({
            "dataset": runs[0]["dataset"], "method": method, "seeds": [r["seed"] for r in runs],
            "accuracy_mean": round(float(acc.mean()), 2),
            "accuracy_std": round(float(acc.std(ddof=1)), 2) if len(acc) > 1 else None,
            "accuracies": [round(float(a), 2) for a in acc],
            "validation_accuracy_mean": round(float(val.mean()), 2),
            "teacher_queries": int(np.mean([r["teacher_queries_sent"] + r["teacher_ledger_hits"]
                                            for r in runs])),
            "teacher_accuracy": (round(100 * teacher["test_accuracy"], 2) if teacher else None),
            "num_shots": runs[0]["num_shots"], "num_mixup": images_of(runs[0], "mixup"),
            "num_cvae": images_of(runs[0], "cvae"), "num_validation": runs[0].get("num_validation"),
            "stage_seconds": {k: round(float(np.mean(v)), 1) for k, v in stages.items()},
            "paper_accuracy": PAPER.get(runs[0]["dataset"], {}).get(method),
            "reports": [os.path.relpath(r["path"], _REPO) for r in runs],
            "code_commits": sorted({str(r.get("code_commit")) for r in runs}),
        })
    return rows


def summarize_rows(reports: dict[str, dict]) -> list[dict]:
    """One line per row of ROWS that has stored reports, in ROWS' order (sample std, ddof = 1)."""
    lines = []
    for name, row in ROWS.items():
        runs = sorted((r for r in reports.values() if r.get("kind") == "row" and r.get("row") == name),
                      key=lambda r: r["seed"])
        if not runs:
            continue
        acc = np.array([r["student_accuracy"] for r in runs]) * 100
        lines.append({
            "row": name, "method": row.method, "what": row.what, "seeds": [r["seed"] for r in runs],
            "query_budget": row.query_budget,
            "accuracy_mean": round(float(acc.mean()), 2),
            "accuracy_std": round(float(acc.std(ddof=1)), 2) if len(acc) > 1 else None,
            "accuracies": [round(float(a), 2) for a in acc],
            "validation_accuracy_mean": round(float(np.mean(
                [100 * r["student_validation_accuracy"] for r in runs])), 2),
            "teacher_queries": int(np.mean([r["teacher_queries_sent"] + r["teacher_ledger_hits"]
                                            for r in runs])),
            "num_mixup": images_of(runs[0], "mixup"), "num_cvae": images_of(runs[0], "cvae"),
            "student_steps": runs[0].get("student_steps"),
            "student_seconds": round(float(np.mean([r["stage_seconds"]["student_training"]
                                                    for r in runs])), 1),
            "published": PUBLISHED.get(name),
            "reports": [os.path.relpath(r["path"], _REPO) for r in runs],
        })
    return lines


def write_query_curve(tuned: list[dict], path: str) -> str | None:
    """Accuracy against teacher queries for the default recipe's rows; None without matplotlib."""
    curve = [r for r in tuned if r["row"] == "fsbbt_default" or r["query_budget"]]
    if not curve:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed: no query curve")
        return None
    curve.sort(key=lambda r: r["teacher_queries"])
    fig, ax = plt.subplots(figsize=(6, 4))
    by_name = {r["row"]: r for r in tuned}
    old = [r for r in curve if not r["row"].endswith(tuple(cost_table.KINDS))]
    ax.errorbar([r["teacher_queries"] for r in old], [r["accuracy_mean"] for r in old],
                yerr=[r["accuracy_std"] or 0 for r in old], fmt="o:", capsize=3, alpha=0.6,
                label="FS-BBT, 50 augmented epochs (plan cut), before issue 28")
    for kind, what in cost_table.KINDS.items():  # Issue 28: the default recipe under a budget.
        series = [by_name[n] for n in (f"fsbbt_q{b}_{kind}" for b in cost_table.BUDGETS)
                  if n in by_name] + ([by_name[cost_table.FULL_PLAN]]
                                      if cost_table.FULL_PLAN in by_name else [])
        if len(series) > 1:
            ax.errorbar([r["teacher_queries"] for r in series],
                        [r["accuracy_mean"] for r in series],
                        yerr=[r["accuracy_std"] or 0 for r in series], fmt="o-", capsize=3,
                        label=f"default recipe: {what}")
    for r in tuned:
        if r["method"] in ("student_alone", "standard_kd"):
            ax.errorbar(r["teacher_queries"], r["accuracy_mean"], yerr=r["accuracy_std"] or 0,
                        fmt="s", capsize=3, label=f"{r['method']} (tuned)")
    ax.axhline(86.50, ls="--", c="gray", lw=1, label="DivBFKD, 48,000 synthetic (published)")
    ax.axhline(84.73, ls=":", c="gray", lw=1, label="FS-BBT paper (published)")
    ax.set_xlabel("teacher queries")
    ax.set_ylabel("student test accuracy, % (mean ± sample std)")
    ax.set_title("Fashion-MNIST, LeNet-5-half: accuracy against queries")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tuned_section(tuned: list[dict], results_md: str, curve: str | None) -> list[str]:
    """RESULTS.md's tuned table (issue 13), from the stored ``row-*`` reports."""
    if not tuned:
        return []
    lines = ["## Tuned baselines, the default recipe, accuracy against queries, same-size student",
             "", "`python benchmarks/reproduce.py --dataset=fashion_mnist` (ROWS in reproduce.py): "
             "the teacher above, served",
             "over gRPC; the student's test accuracy, final-epoch weights. The baselines' recipe "
             "was fixed from the",
             "validation-split tries in the log below; the budget rows cut the default plan to the "
             "budget with",
             "`--query_budget` (MixUp and CVAE in their ratio; the student keeps the full plan's "
             "optimizer steps).",
             "Published figures: the same teacher architecture and N (DivBFKD's query count is not "
             "comparable: notes below).", "",
             "| row | what | teacher queries | MixUp | CVAE | student steps | student acc. (mean ± "
             "sample std) | per seed | validation acc. | published | student training s | run date |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---|"]
    for r in tuned:
        std = "-" if r["accuracy_std"] is None else f"{r['accuracy_std']:.2f}"
        per_seed = ", ".join(
            f"[{a:.2f}]({os.path.relpath(os.path.join(_REPO, p), os.path.dirname(results_md))})"
            for a, p in zip(r["accuracies"], r["reports"]))
        published = "; ".join(f"{v:.2f} ({k})" for k, v in r["published"] or ()) or "-"
        lines.append(f"| {r['row']} | {r['what']} | {r['teacher_queries']:,} | {r['num_mixup']:,} | "
                     f"{r['num_cvae']:,} | {r['student_steps'] or 0:,} | "
                     f"**{r['accuracy_mean']:.2f} ± {std}** | {per_seed} | "
                     f"{r['validation_accuracy_mean']:.2f} | {published} | "
                     f"{r['student_seconds']:.0f} | {report_dates.days(r['reports'])} |")
    if curve:
        lines += ["", f"![accuracy against queries]"
                      f"({os.path.relpath(curve, os.path.dirname(results_md))})"]
    return lines


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
        ax.errorbar(row["teacher_queries"], row["accuracy_mean"], yerr=row["accuracy_std"] or 0,
                    fmt="o", capsize=3, label=row["method"])
    paper = PAPER.get(rows[0]["dataset"], {})
    if "fsbbt" in paper:
        ax.axhline(paper["fsbbt"], ls="--", c="gray", lw=1, label="paper FS-BBT")
    ax.set_xlabel("teacher queries")
    ax.set_ylabel("student test accuracy, % (mean ± sample std)")
    ax.set_title(f"{rows[0]['dataset']}: accuracy vs teacher queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _link(path: str, results_md: str) -> str:
    return f"[{os.path.basename(path)}]({os.path.relpath(path, os.path.dirname(results_md))})"


def tries_table(reports: dict[str, dict], results_md: str) -> list[str]:
    """The log of tries, each figure linked to its stored report (validation split only)."""
    lines = ["| try | what | validation acc. | compared with | outcome | report |",
             "|---|---|---:|---|---|---|"]
    teacher_tries = {k: r for k, r in reports.items() if r.get("kind") == "teacher_try"}
    if teacher_tries:
        best = max(teacher_tries, key=lambda k: teacher_tries[k]["validation_accuracy"])
        for key, r in teacher_tries.items():
            lines.append(f"| teacher: {r['try']} | {r['what']} | "
                         f"{100 * r['validation_accuracy']:.2f} | the other teacher recipes | "
                         f"{'chosen: best' if key == best else 'not chosen'} | "
                         f"{_link(r['path'], results_md)} |")
    for key, r in reports.items():
        if r.get("kind") != "student_try":
            continue
        method, _, what, seed = STUDENT_TRIES.get(r["try"], (r["method"], None, r["try"], 0))
        base_name = TRY_COMPARED_WITH.get(r["try"], f"{method}-seed{seed}")
        base = reports.get(base_name)
        base_val = base and base.get("student_validation_accuracy")
        delta = None if not base_val else 100 * (r["student_validation_accuracy"] - base_val)
        kept = "-" if delta is None else (
            f"{'better' if delta > 0 else 'not better'} on validation ({delta:+.2f}); "
            f"{STUDENT_TRY_STATUS.get(r['try'], 'not adopted')}")
        compared = (f"{base_name}: {100 * base_val:.2f} ({_link(base['path'], results_md)})"
                    if base_val else "-")
        lines.append(f"| student: {r['try']} | {what} | {100 * r['student_validation_accuracy']:.2f} "
                     f"| {compared} | {kept} | {_link(r['path'], results_md)} |")
    return lines


_TIME_COLUMNS = ("wall time", " s |", " s (", "seconds", "synthesis", "latency")


def dated_tables(lines: list[str], results_md: str) -> list[str]:
    """``lines`` with a line under each table that has a time column and no ``run date`` column,
    naming the machine and the days of the reports its rows link to (``.json`` links); a table
    linking none is left as it is (its section or note dates it)."""
    out, table = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            out += table
            header = table[0].lower()
            if any(t in header for t in _TIME_COLUMNS) and "run date" not in header:
                linked = [os.path.join(os.path.dirname(results_md), link) for row in table[2:]
                          for link in re.findall(r"\]\(([^)]+\.json)\)", row)]
                if linked:
                    out += ["", f"Times: {report_dates.MACHINE}, runs of "
                                f"{report_dates.days(linked)}."]
            table = []
        out.append(line)
    return out[:-1]


def write_markdown(rows: list[dict], reports: dict[str, dict], path: str, plot: str | None,
                   grids: dict, tuned: list[str]) -> None:
    teacher = reports.get("teacher")
    seeds = max((len(r["seeds"]) for r in rows), default=0)
    lines = ["# Results", "",
             "Generated by `python benchmarks/reproduce.py` from the reports stored in",
             "[benchmarks/reports/](benchmarks/reports/); every figure below is read from one of them.",
             "Every time figure (seconds, minutes, queries per second, latencies) is of "
             f"{report_dates.MACHINE},",
             "on the day given with it: a table's `run date` column or the line under it (the day of the",
             "commit that stored its reports), or a note's own date.",
             "Student accuracy: full test set, measured once per run by serving the exported student",
             "over gRPC, final-epoch weights (no checkpoint is selected). Every choice (teacher recipe,",
             "student recipe) is made on the **validation split**: "
             f"{rows[0]['num_validation'] if rows else '-'} training images held out by a fixed seed,",
             "neither trained on by the teacher nor drawn as few shots. "
             f"Mean ± **sample** standard deviation (ddof = 1) over {seeds} seeds.", ""]
    if teacher:
        lines += [f"Teacher: {os.path.basename(os.path.dirname(teacher['base']))} "
                  f"(chosen on the validation split, below), trained on the training split less the "
                  f"validation split; test accuracy over gRPC **{100 * teacher['test_accuracy']:.2f}%** "
                  f"({teacher['test_examples']:,} images, measured once; "
                  f"{_link(teacher['path'], path)}).", ""]
    lines += [*frontier_table.section(path), "", "## FS-BBT and its baselines", ""]
    lines += ["| dataset | method | teacher acc. | N | MixUp | CVAE | teacher queries | student acc. "
              "(mean ± sample std) | per seed | validation acc. (mean) | paper | student training s "
              "| total s | run date |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        paper = "-" if r["paper_accuracy"] is None else f"{r['paper_accuracy']:.2f}"
        std = "-" if r["accuracy_std"] is None else f"{r['accuracy_std']:.2f}"
        per_seed = ", ".join(f"[{a:.2f}]({os.path.relpath(os.path.join(_REPO, p), os.path.dirname(path))})"
                             for a, p in zip(r["accuracies"], r["reports"]))
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['teacher_accuracy'] or '-'} | {r['num_shots']} | "
            f"{r['num_mixup']} | {r['num_cvae']} | {r['teacher_queries']:,} | "
            f"**{r['accuracy_mean']:.2f} ± {std}** | {per_seed} | "
            f"{r['validation_accuracy_mean']:.2f} | {paper} | "
            f"{r['stage_seconds'].get('student_training', 0):.0f} | "
            f"{sum(r['stage_seconds'].values()):.0f} | {report_dates.days(r['reports'])} |")
    lines += ["", "Teacher queries: images sent to the teacher to build the transfer set (the teacher's",
              "own test-set evaluation, 10,000 queries, is made once for the whole table).", "",
              "Paper (FS-BBT, Nguyen et al. 2022): teacher / student alone / FS-BBT per dataset: " +
              "; ".join(f"{d} {p['teacher']} / {p['student_alone']} / {p['fsbbt']}"
                        for d, p in PAPER.items()), ""]
    lines += ["Other datasets need data the development machine does not have (offline); on an online GPU "
              "node:", ""]
    lines += [f"- {d}: `{c}`" for d, c in GPU_COMMANDS.items()]
    if plot:
        lines += ["", f"![accuracy vs teacher queries]({os.path.relpath(plot, os.path.dirname(path))})"]
    for name, grid in grids.items():
        lines += ["", f"{name} images, one row per teacher class: "
                      f"![{name}]({os.path.relpath(grid, os.path.dirname(path))})"]
    lines += ["", *tuned] if tuned else []
    timing = time_to_accuracy.section()
    lines += ["", *timing] if timing else []
    if rows and rows[0]["dataset"] == "fashion_mnist":
        fsbbt = next((r for r in rows if r["method"] == "fsbbt"), None)
        soft = fsbbt and ("the table above, the paper's constant student rate", fsbbt["accuracy_mean"])
        lines += ["", *label_only_table.section(path, soft)]
        onehot = label_only_table.rows(label_only_table.load(), {"fsbbt_onehot": ("", "")})
        few_shot = ([("FS-BBT, soft labels (N = 2000)", fsbbt["accuracy_mean"], 50_000)] if fsbbt
                    else []) + [("FS-BBT, top-1 labels", r["test_mean"], r["queries"]) for r in onehot]
        zero_shot = zero_shot_table.section(path, few_shot)
        lines += ["", *zero_shot] if zero_shot else []
        own_images = images_vs_idx.section()
        lines += ["", *own_images] if own_images else []
    lines += ["", "## Log of tries (from stored reports; validation split only)", "",
              "Each try is one run (seed 0 unless its name says another), compared with the grid's",
              "cell of the same seed; its figure is the student's (or teacher's) accuracy on the",
              "validation split, read from the linked report. The test split is not read by a try.", ""]
    lines += tries_table(reports, path)
    notes = os.path.join(_REPO, "benchmarks", "RESULTS_NOTES.md")
    if os.path.exists(notes):  # Hand-kept notes: what earlier figures were and why they are struck.
        with open(notes) as f:
            lines += ["", f.read().rstrip()]
    lines = dated_tables(lines, path)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_results() -> None:
    reports = load_reports(FLAGS.dataset)
    rows = summarize(reports)
    if not rows:
        sys.exit(f"error: no stored reports in {os.path.join(FLAGS.reports_dir, FLAGS.dataset)}")
    tuned = summarize_rows(reports)
    workdir_lib.write_json(FLAGS.results_json, {"rows": rows, "tuned_rows": tuned})
    pictures = os.path.join(os.path.dirname(FLAGS.results_md), "benchmarks", "pictures")
    os.makedirs(pictures, exist_ok=True)
    plot = write_plot(rows, os.path.join(pictures, f"{FLAGS.dataset}_accuracy_vs_queries.png"))
    curve = write_query_curve(tuned, os.path.join(pictures, f"{FLAGS.dataset}_query_curve.png"))
    grids = {}
    fsbbt = reports.get("fsbbt-seed0")
    for name, src in (fsbbt or {}).get("grids", {}).items():
        if os.path.exists(src):
            dst = os.path.join(pictures, f"{FLAGS.dataset}_grid_{name}.png")
            shutil.copyfile(src, dst)
            grids[name] = dst
    write_markdown(rows, reports, FLAGS.results_md, plot, grids,
                   tuned_section(tuned, FLAGS.results_md, curve)
                   + ["", *cost_table.section(FLAGS.results_md, tuned)])
    for r in rows:
        std = "-" if r["accuracy_std"] is None else f"{r['accuracy_std']:.2f}"
        print(f"{r['method']:>14}: {r['accuracy_mean']:.2f} ± {std} (validation "
              f"{r['validation_accuracy_mean']:.2f}; {r['teacher_queries']:,} queries; paper "
              f"{r['paper_accuracy']})", flush=True)


def main(argv):
    del argv
    for m in FLAGS.methods:
        if m not in fsbbt_methods.METHODS:
            raise app.UsageError(f"--methods: {m!r} is not one of {fsbbt_methods.METHODS}")
    for name in FLAGS.student_tries or ():
        if name not in STUDENT_TRIES:
            raise app.UsageError(f"--student_tries: {name!r} is not one of {sorted(STUDENT_TRIES)}")
    for name in FLAGS.rows or ():
        if name not in ROWS:
            raise app.UsageError(f"--rows: {name!r} is not one of {sorted(ROWS)}")
    if not FLAGS.write_only:
        try:
            run_all(FLAGS.methods, [int(s) for s in FLAGS.seeds])
        except errors.DatasetUnavailableError as e:
            sys.exit(f"error: {e}\nRun this on an online GPU node: {GPU_COMMANDS.get(FLAGS.dataset)}")
    write_results()


if __name__ == "__main__":
    app.run(main)
