r"""Time to accuracy: tfkd's runs beside a plain Keras 3 implementation of the same algorithm.

  python benchmarks/time_to_accuracy.py --session=s2 --seeds=0 --kinds=reference,tfkd,tfkd_e25

For each seed, one after the other on this machine (stop other work first: all are timed), each
kind of :data:`KINDS`:

- **reference**: ``python ../shared/reference/fsbbt_reference.py OUT --seed=<S>``, the project's
  plain implementation of FS-BBT (teacher in process, Keras ``fit`` at batch 64 for 50 epochs). Its
  report's ``seconds``: teacher, cvae, synthesis_and_labels, student.
- **tfkd**: the README command, ``python launch/distill.py --workdir=OUT --seed=<S>``: it trains a
  LeNet-5 teacher into the work dir, serves it over gRPC and runs the default recipe, whatever it
  was then (session ``s1``: 50 epochs with training-time augmentation; ``s2``: 100 with it;
  ``s3``: 25 without).
- **tfkd_e25**: the same command with ``--student_epochs=25``: a quarter of the default's steps.

"After the teacher" is what the issue compares: the reference's cvae + synthesis_and_labels + student
seconds; tfkd's CVAE training and sampling, MixUp, the teacher's labels and the student's training
(stages ``cvae_training``, ``cvae_sampling``, ``mixup``, ``label_*``, ``student_training``). Reports
are copied to ``benchmarks/reports/time_to_accuracy/<session>-<kind>-seed<S>.json``; a run whose
report exists is not run again. A session is one sitting on one machine: tfkd's runs are compared
only with the reference of the same session and seed (the same code's seconds differ by up to 2x
between sessions here). RESULTS.md's section is :func:`section` (``reproduce.py --write_only``).
"""

import collections
import glob
import json
import os
import shutil
import subprocess
import sys

import report_dates  # benchmarks/, beside this script
from absl import app
from absl import flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(_REPO, "..", "shared", "reference", "fsbbt_reference.py")
OUT = os.path.join(_REPO, "runs", "time_to_accuracy")
STORED = os.path.join(_REPO, "benchmarks", "reports", "time_to_accuracy")
TFKD_STAGES = ("cvae_training", "cvae_sampling", "mixup", "label_real", "label_mixup", "label_cvae",
               "student_training")
# Kind -> the launcher's extra flags (None: the reference implementation).
KINDS = {"reference": None, "tfkd": [], "tfkd_e25": ["--student_epochs=25"]}

FLAGS = flags.FLAGS


def after_teacher(kind: str, report: dict) -> tuple[float, float]:
    """(seconds after the teacher, of which the student's training) of a stored report."""
    if kind == "reference":
        s = report["seconds"]
        return s["cvae"] + s["synthesis_and_labels"] + s["student"], s["student"]
    s = report["stage_seconds"]
    return sum(s.get(k, 0.0) for k in TFKD_STAGES), s["student_training"]


def run(session: str, kind: str, seed: int) -> dict:
    """Runs (or finds) one report of ``kind`` for ``seed`` in ``session``; returns it."""
    name = f"{session}-{kind}-seed{seed}"
    stored = os.path.join(STORED, name + ".json")
    if not os.path.exists(stored):
        out = os.path.join(OUT, name)
        if KINDS[kind] is None:
            command = [sys.executable, REFERENCE, out, f"--seed={seed}"]
        else:
            command = [sys.executable, os.path.join(_REPO, "launch", "distill.py"),
                       f"--workdir={out}", f"--seed={seed}", "--verbose=0", *KINDS[kind]]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        os.makedirs(STORED, exist_ok=True)
        shutil.copyfile(os.path.join(out, "report.json"), stored)
    with open(stored) as f:
        return json.load(f)


def augmentation(report: dict) -> str:
    """'yes' / 'no': whether the tfkd student trained with training-time augmentation."""
    recipe = report.get("student_recipe")
    if recipe is None:  # Reports before the field: every run had the then-default augmentation.
        return "yes"
    return "yes" if any(recipe[k] for k in ("mixup_alpha", "rotation_degrees", "shift_fraction")) \
        else "no"


def section() -> list[str]:
    """RESULTS.md's time-to-accuracy section from the stored reports; [] without a pair."""
    found = collections.defaultdict(dict)  # (session, seed) -> kind -> report
    paths = collections.defaultdict(list)  # session -> its reports
    for path in sorted(glob.glob(os.path.join(STORED, "*-seed*.json"))):
        session, kind, seed = os.path.basename(path)[:-len(".json")].rsplit("-", 2)
        with open(path) as f:
            found[session, int(seed[len("seed"):])][kind] = json.load(f)
        paths[session].append(path)
    lines = []
    for (session, seed), runs in sorted(found.items()):
        if "reference" not in runs:
            continue
        ref = runs["reference"]
        ref_s, ref_student = after_teacher("reference", ref)
        for kind in (k for k in KINDS if k in runs and k != "reference"):
            ours = runs[kind]
            our_s, our_student = after_teacher(kind, ours)
            lines.append(f"| {session}, {report_dates.days(paths[session])} | {seed} | "
                         f"{100 * ref['student_accuracy']:.2f} | {ref_s:.0f} "
                         f"({ref_student:.0f}) | {kind} | {ours.get('student_epochs')} | "
                         f"{augmentation(ours)} | "
                         f"{100 * ours['student_accuracy']:.2f} | {our_s:.0f} ({our_student:.0f}) | "
                         f"**{our_s / ref_s:.2f}** |")
    if not lines:
        return []
    return ["## Time to accuracy against a plain Keras implementation", "",
            "`python benchmarks/time_to_accuracy.py`: the plain Keras 3 FS-BBT of "
            "`../shared/reference/fsbbt_reference.py` (50 student epochs) and",
            "tfkd's README command (`tfkd`; `tfkd_e25`: with `--student_epochs=25`), one after the other "
            f"on {report_dates.MACHINE}, nothing else",
            "running. A session is one sitting there, named with its day (the day of the commit "
            "that stored its reports); each tfkd run",
            "is compared with the reference of its own session and seed. Seconds after "
            "the teacher: CVAE, synthesis, the teacher's",
            "labels and the student's training. Test accuracy, final epoch. Reports: "
            "benchmarks/reports/time_to_accuracy/.", "",
            "| session | seed | reference acc. % | reference s (student s) | tfkd run | student epochs "
            "| augmentation | tfkd acc. % | tfkd s (student s) | tfkd / reference time |",
            "|---|---:|---:|---:|---|---:|---|---:|---:|---:|", *lines]


def main(argv) -> None:
    del argv
    unknown = [kind for kind in FLAGS.kinds if kind not in KINDS]
    if unknown:
        raise app.UsageError(f"--kinds: {unknown} not in {list(KINDS)}")
    for seed in FLAGS.seeds:
        for kind in FLAGS.kinds:
            run(FLAGS.session, kind, int(seed))
    print("\n".join(section()))


if __name__ == "__main__":  # Flags only here: reproduce.py imports this module beside its own.
    flags.DEFINE_string("session", "s2", "Name of this sitting (one machine, one after the other).")
    flags.DEFINE_list("seeds", ["0"], "Seeds.")
    flags.DEFINE_list("kinds", list(KINDS), f"Runs per seed, from {list(KINDS)}.")
    app.run(main)
