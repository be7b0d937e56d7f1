r"""How far the black-box impression search brings the teacher's softmax at T toward its targets,
for a few Adam rates and direction grids, beside the white-box search at the paper's 1,500 steps:
one round (200 impressions, batches of 10, near one-hot targets from the identity similarity),
the teacher's SavedModel queried in-process (no server: this measures the search, not serving).

  python benchmarks/blackbox_settings.py > benchmarks/reports/blackbox_settings.txt

Prints one line per setting: the mean CE (nats) to the targets before the first step and after the
last, and how often the teacher's top-1 class is the class asked for. This is the teacher's own
loss, not a student's accuracy: it was the first basis of the black-box defaults (see
benchmarks/ZERO_SHOT_NOTES.md for what the students said).
"""

import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd.methods.zskd import blackbox
from tfkd.methods.zskd import impressions  # noqa: E402
from tfkd.methods.zskd import whitebox

TEACHER = "runs/reproduce/fashion_mnist/teacher_tries/lenet5_same_cosine/teacher/1"
SETTINGS = [(0.003, 7), (0.01, 7), (0.03, 7), (0.01, 14), (0.03, 14), (0.05, 14), (0.1, 14),
            (0.01, 28)]


def main():
    teacher = whitebox.SavedModelTeacher(sys.argv[1] if len(sys.argv) > 1 else TEACHER)

    def probe(x):
        return np.concatenate([tf.nn.softmax(teacher.logits(tf.constant(x[i:i + 8192]))).numpy()
                               for i in range(0, len(x), 8192)])

    def report(what, path, images, classes, last):
        first = np.load(path)["first_loss"].mean()
        hit = (probe(images).argmax(axis=1) == classes).mean()
        print(f"{what}: CE {first:.3f} -> {last.mean():.3f}, top-1 = class asked {hit:.2f}",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for lr, resolution in SETTINGS:
            path = os.path.join(tmp, f"bb-{lr}-{resolution}.npz")
            config = impressions.ImpressionConfig(count=200, iterations=100, batch_size=10,
                                                  learning_rate=lr)
            zo = blackbox.ZerothOrderConfig(resolution=resolution)
            images, _, classes, last = blackbox.synthesize_blackbox(
                probe, probe, teacher.image_shape, 10, config, zo, 0, state_path=path)
            report(f"black-box 100 steps, Adam {lr}, {resolution} x {resolution} directions", path,
                   images, classes, last)
        path = os.path.join(tmp, "wb.npz")
        config = impressions.config_for("fashion_mnist", count=200, iterations=1500, batch_size=10)
        images, _, classes, last = impressions.synthesize(
            teacher.logits, teacher.image_shape, np.eye(10, dtype=np.float32), config, 0,
            state_path=path)
        report("white-box 1,500 steps, Adam 0.001 (the paper's)", path, images, classes, last)


if __name__ == "__main__":
    main()
