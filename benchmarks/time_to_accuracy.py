r"""Time to accuracy: tfkd's default run beside a plain Keras 3 implementation of the same algorithm.

  python benchmarks/time_to_accuracy.py [SEED ...]        (default: 1, the reference's own default)

For each seed, one after the other on this machine (stop other work first: both are timed):

1. **reference**: ``python ../shared/reference/fsbbt_reference.py OUT/reference-seed<S> --seed=<S>``,
   the project's plain implementation of FS-BBT (teacher in process, Keras ``fit`` at batch 64 for
   50 epochs). Its report's ``seconds``: teacher, cvae, synthesis_and_labels, student.
2. **tfkd**: the README command, ``python launch/distill.py --workdir=OUT/tfkd-seed<S> --seed=<S>``:
   it trains a LeNet-5 teacher into the work dir, serves it over gRPC and runs the default recipe.

"After the teacher" is what the issue compares: the reference's cvae + synthesis_and_labels + student
seconds; tfkd's CVAE training and sampling, MixUp, the teacher's labels and the student's training
(stages ``cvae_training``, ``cvae_sampling``, ``mixup``, ``label_*``, ``student_training``). Both
reports are copied to ``benchmarks/reports/time_to_accuracy/``; a run whose report exists is not run
again. RESULTS.md's section is :func:`section` (``reproduce.py --write_only``).
"""

import json
import os
import shutil
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(_REPO, "..", "shared", "reference", "fsbbt_reference.py")
OUT = os.path.join(_REPO, "runs", "time_to_accuracy")
STORED = os.path.join(_REPO, "benchmarks", "reports", "time_to_accuracy")
TFKD_STAGES = ("cvae_training", "cvae_sampling", "mixup", "label_real", "label_mixup", "label_cvae",
               "student_training")


def after_teacher(kind: str, report: dict) -> tuple[float, float]:
    """(seconds after the teacher, of which the student's training) of a stored report."""
    if kind == "reference":
        s = report["seconds"]
        return s["cvae"] + s["synthesis_and_labels"] + s["student"], s["student"]
    s = report["stage_seconds"]
    return sum(s.get(k, 0.0) for k in TFKD_STAGES), s["student_training"]


def run(kind: str, seed: int) -> dict:
    """Runs (or finds) one side's report for ``seed``; returns it."""
    stored = os.path.join(STORED, f"{kind}-seed{seed}.json")
    if not os.path.exists(stored):
        out = os.path.join(OUT, f"{kind}-seed{seed}")
        if kind == "reference":
            command = [sys.executable, REFERENCE, out, f"--seed={seed}"]
        else:
            command = [sys.executable, os.path.join(_REPO, "launch", "distill.py"),
                       f"--workdir={out}", f"--seed={seed}", "--verbose=0"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        os.makedirs(STORED, exist_ok=True)
        shutil.copyfile(os.path.join(out, "report.json"), stored)
    with open(stored) as f:
        return json.load(f)


def section() -> list[str]:
    """RESULTS.md's time-to-accuracy section from the stored reports; [] without a pair."""
    pairs = []
    for seed in range(10):
        paths = [os.path.join(STORED, f"{k}-seed{seed}.json") for k in ("reference", "tfkd")]
        if all(os.path.exists(p) for p in paths):
            pairs.append((seed, *(json.load(open(p)) for p in paths)))
    if not pairs:
        return []
    lines = ["## Time to accuracy against a plain Keras implementation", "",
             "`python benchmarks/time_to_accuracy.py`: the plain Keras 3 FS-BBT of "
             "`../shared/reference/fsbbt_reference.py` and",
             "tfkd's README command, one after the other on this machine (2 CPU cores, nothing else "
             "running). Seconds after the",
             "teacher: CVAE, synthesis, the teacher's labels and the student's training. Reports: "
             "benchmarks/reports/time_to_accuracy/.", "",
             "| seed | reference acc. % | reference s (student s) | tfkd acc. % | tfkd student epochs "
             "| tfkd s (student s) | tfkd / reference time |", "|---|---:|---:|---:|---:|---:|---:|"]
    for seed, ref, ours in pairs:
        (ref_s, ref_student), (our_s, our_student) = after_teacher("reference", ref), after_teacher(
            "tfkd", ours)
        lines.append(f"| {seed} | {100 * ref['student_accuracy']:.2f} | {ref_s:.0f} "
                     f"({ref_student:.0f}) | {100 * ours['student_accuracy']:.2f} | "
                     f"{ours.get('student_epochs')} | {our_s:.0f} "
                     f"({our_student:.0f}) | {our_s / ref_s:.2f} |")
    return lines


def main(seeds: list[int]) -> None:
    for seed in seeds:
        for kind in ("reference", "tfkd"):
            run(kind, seed)
    print("\n".join(section()))


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [1])
