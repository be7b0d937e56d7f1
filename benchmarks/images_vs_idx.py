"""FS-BBT on Fashion-MNIST fed from PNG folders (``--images``) against the IDX path, same teacher.

Both runs distil the grid's teacher (lenet5_same_cosine, 90.75%), served on a loopback port, with
FS-BBT's defaults (N = 2,000, 43,200 MixUp, 4,800 CVAE, LeNet-5-half):
  * ``idx``: the IDX files; the few shots a balanced draw from the pool (the training split less
    the 5,000 validation images); accuracy on the 10,000 test images;
  * ``png``: the same pool written as 55,000 PNG files in one flat folder (no labels) and the test
    split as 10,000 PNG files in one sub-folder per class; ``--images`` on the first (a uniform
    draw of 2,000), ``--eval_images`` on the second, class names from a file.

  python benchmarks/images_vs_idx.py 0 1 2      # seeds; a finished run is skipped, a killed one resumes

Work dirs: runs/images/{idx,png}-seed<S>/; PNG folders: runs/images/png/. Prints one JSON line per
run and a table; reports are copied to benchmarks/reports/fashion_mnist_images/.
"""
import json
import os
import shutil
import sys
import time

import numpy as np

from tfkd import data
from tfkd import images
from tfkd import pipeline
from tfkd import serving
from tfkd import teacher as teacher_lib

TEACHER = "runs/reproduce/fashion_mnist/teacher_tries/lenet5_same_cosine/teacher"
ROOT = "runs/images"
STORED = "benchmarks/reports/fashion_mnist_images"
NAMES = tuple(n.replace("/", "-") for n in data.dataset_spec("fashion_mnist").class_names)


def write_pngs() -> tuple[str, str, str]:
    """The pool and test split as PNG folders (written once; a marker file says complete)."""
    pool_dir, test_dir = os.path.join(ROOT, "png", "pool"), os.path.join(ROOT, "png", "test")
    names_file = os.path.join(ROOT, "png", "class_names.txt")
    marker = os.path.join(ROOT, "png", "COMPLETE")
    if not os.path.exists(marker):
        shutil.rmtree(os.path.join(ROOT, "png"), ignore_errors=True)
        dataset = data.with_validation_split(data.load_dataset("fashion_mnist"), 5000)
        start = time.perf_counter()
        images.write_png_folder(dataset.x_train, pool_dir)
        images.write_png_folder(dataset.x_test, test_dir, dataset.y_test, NAMES)
        with open(names_file, "w") as f:
            f.write("\n".join(NAMES) + "\n")
        open(marker, "w").close()
        print(f"wrote {len(dataset.x_train) + len(dataset.x_test)} PNG files in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return pool_dir, test_dir, names_file


def run(kind: str, seed: int, target: str, pngs) -> dict:
    workdir = os.path.join(ROOT, f"{kind}-seed{seed}")
    done = os.path.join(workdir, "report.json")
    if not os.path.exists(done):
        teacher = teacher_lib.TeacherConfig(target=target)
        if kind == "idx":
            config = pipeline.DistillConfig(workdir=workdir, seed=seed, teacher=teacher,
                                            compress=(), verbose=2)
        else:
            config = pipeline.DistillConfig(
                workdir=workdir, seed=seed, teacher=teacher, num_validation=0, compress=(),
                verbose=2, images=images.ImageSourceConfig(path=pngs[0], eval_path=pngs[1],
                                                           class_names=pngs[2]))
        pipeline.run(config)
    with open(done) as f:
        report = json.load(f)
    os.makedirs(STORED, exist_ok=True)
    shutil.copy(done, os.path.join(STORED, f"{kind}-seed{seed}.json"))
    return report


def section() -> list[str]:
    """RESULTS.md's section comparing the two paths, from the stored reports; [] without any."""
    stored = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), STORED)
    runs = {}
    for kind in ("idx", "png"):
        for seed in range(10):
            path = os.path.join(stored, f"{kind}-seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    runs[kind, seed] = json.load(f)
    seeds = sorted(s for k, s in runs if k == "idx" and ("png", s) in runs)
    if not seeds:
        return []
    lines = ["## Your own images: PNG folders against the IDX files", "",
             "`benchmarks/images_vs_idx.py`: FS-BBT defaults, the LeNet-5 teacher above (90.75%) "
             "served over gRPC. `idx`",
             "reads the IDX files (a balanced draw of 2,000 from the pool); `png` the same 55,000-image "
             "pool as PNG files",
             "in one flat folder (`--images`, a uniform draw of 2,000, no labels) and the 10,000 test "
             "images in class",
             "folders (`--eval_images`, `--class_names`). Fidelity: the student's top-1 agreement "
             "with the teacher on",
             "the test images. Reports: benchmarks/reports/fashion_mnist_images/.", "",
             "| seed | IDX student % | PNG student % | PNG - IDX | IDX fidelity % | PNG fidelity % | "
             "PNG input images/s |",
             "|---|---|---|---|---|---|---|"]
    for seed in seeds:
        a, b = runs["idx", seed], runs["png", seed]
        lines.append(f"| {seed} | {100 * a['student_accuracy']:.2f} | {100 * b['student_accuracy']:.2f} "
                     f"| {100 * (b['student_accuracy'] - a['student_accuracy']):+.2f} | "
                     f"{100 * a['student_fidelity']:.2f} | {100 * b['student_fidelity']:.2f} | "
                     f"{b['images']['images_per_second']:,.0f} (shots), "
                     f"{b['images']['eval_images_per_second']:,.0f} (test) |")
    if len(seeds) > 1:
        diff = [100 * (runs["png", s]["student_accuracy"] - runs["idx", s]["student_accuracy"])
                for s in seeds]
        lines.append(f"| mean | | | {np.mean(diff):+.2f} | | | |")
    return lines


def main(seeds):
    pngs = write_pngs()
    rows = []
    with serving.ModelServer([serving.ModelConfig("teacher", TEACHER)], poll_seconds=0) as srv:
        for seed in seeds:
            for kind in ("idx", "png"):
                r = run(kind, seed, srv.target, pngs)
                line = {"kind": kind, "seed": seed, "student_accuracy": r["student_accuracy"],
                        "student_fidelity": r.get("student_fidelity"),
                        "teacher_accuracy": r["teacher_accuracy"],
                        "images": r.get("images"), "seconds": r["stage_seconds"]}
                print(json.dumps(line), flush=True)
                rows.append(line)
    print(f"{'run':<6} {'seed':>4} {'student %':>9} {'fidelity %':>10} {'images/s':>9}")
    for row in rows:
        fidelity = row["student_fidelity"]
        speed = (row["images"] or {}).get("images_per_second")
        print(f"{row['kind']:<6} {row['seed']:>4} {100 * row['student_accuracy']:>9.2f} "
              f"{'-' if fidelity is None else f'{100 * fidelity:.2f}':>10} "
              f"{'-' if speed is None else speed:>9}")
    for kind in ("idx", "png"):
        acc = [100 * r["student_accuracy"] for r in rows if r["kind"] == kind]
        print(f"{kind}: {np.mean(acc):.2f} ± {np.std(acc, ddof=1) if len(acc) > 1 else 0:.2f} "
              f"over {len(acc)} seeds")


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0])
