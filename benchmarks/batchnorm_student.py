r"""Issue 25 §3's case, end to end: a teacher tfkd did not make, a folder of 1,000 JPEG files, a
labelled evaluation folder, the default ``mobilenet_v3_small`` student and 5 student epochs (465
optimizer steps; ``--teacher_input_scale=255``, since the teacher takes pixels in [0, 255]), run
with the BatchNorm re-estimation (the default) and without it (``--batchnorm_images=0``, the
behaviour before the fix).

The teacher: a plain ``tf.Module`` SavedModel (signature ``serving_default``: ``pixels`` float32
[N, 48, 48, 3] in [0, 255] -> ``predictions`` float32 [N, 10]) wrapping a LeNet-5 trained here on
Fashion-MNIST (the images are turned grey and resized to 28 x 28 inside it).

  python benchmarks/batchnorm_student.py --out=benchmarks/reports/batchnorm_student.txt

Prints one line per run (exit status, training agreement, served agreement, held-out accuracy and
fidelity, the run's last stderr line) and writes them to ``--out``. Resumable: the work dirs keep
the teacher, the transfer set and the ledger.
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfkd import data  # noqa: E402
from tfkd import pipeline  # noqa: E402
from tfkd import serving  # noqa: E402
from tfkd import teacher_setup  # noqa: E402

flags.DEFINE_string("root", "/tmp/tfkd_bn_benchmark", "Where the teacher, images and work dirs go.")
flags.DEFINE_string("out", None, "Also write the figures to this file.")
flags.DEFINE_integer("teacher_epochs", 3, "Epochs of the wrapped LeNet-5 teacher.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ForeignTeacher(tf.Module):
    """float32 [N, 48, 48, 3] in [0, 255] -> ``predictions`` [N, 10], around a tfkd teacher."""

    def __init__(self, version_dir: str):
        super().__init__()
        self.inner = tf.saved_model.load(version_dir)

    @tf.function(input_signature=[tf.TensorSpec([None, 48, 48, 3], tf.float32, name="pixels")])
    def serve(self, pixels):
        grey = tf.image.resize(tf.image.rgb_to_grayscale(pixels / 255.0), [28, 28])
        return {"predictions": self.inner.signatures["serving_default"](images=grey)["probabilities"]}


def _jpeg(image: np.ndarray) -> bytes:
    rgb = tf.image.grayscale_to_rgb(tf.image.resize(tf.constant(image), [48, 48]))
    return tf.io.encode_jpeg(tf.cast(tf.round(rgb * 255), tf.uint8), quality=95).numpy()


def prepare(root: str) -> tuple[str, str, str]:
    """(the foreign teacher's base path, the shots folder, the evaluation folder), made once."""
    fashion = data.load_dataset("fashion_mnist")
    base, shots, held = (os.path.join(root, d) for d in ("foreign_teacher", "shots", "eval"))
    if not os.path.exists(os.path.join(base, "1", "saved_model.pb")):
        small = data.Dataset("fashion_mnist", fashion.x_train[5000:], fashion.y_train[5000:],
                             fashion.x_test, fashion.y_test, 10, fashion.source)
        inner = teacher_setup.train_and_export_teacher(
            small, pipeline.TeacherTrainConfig(epochs=FLAGS.teacher_epochs).resolved("fashion_mnist"),
            os.path.join(root, "lenet5"), verbose=2)
        module = ForeignTeacher(inner["export_dir"])
        tf.saved_model.save(module, os.path.join(base, "1"), signatures={"serving_default": module.serve})
    if not os.path.isdir(shots):
        os.makedirs(shots)
        for i in range(1000):  # Unlabeled: the first 1,000 training images.
            with open(os.path.join(shots, f"{i:04d}.jpg"), "wb") as f:
                f.write(_jpeg(fashion.x_train[i]))
    if not os.path.isdir(held):
        for i in range(1000):  # Labelled by class folder: 1,000 test images.
            folder = os.path.join(held, str(fashion.y_test[i]))
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{i:04d}.jpg"), "wb") as f:
                f.write(_jpeg(fashion.x_test[i]))
    return base, shots, held


def main(argv):
    del argv
    base, shots, held = prepare(FLAGS.root)
    lines = []
    with serving.ModelServer([serving.ModelConfig("foreign", base)], poll_seconds=0) as server:
        for name, extra in (("re-estimated (default)", []), ("not re-estimated", ["--batchnorm_images=0"])):
            workdir = os.path.join(FLAGS.root, "run_" + ("default" if not extra else "stale"))
            result = subprocess.run(
                [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
                 f"--teacher={server.target}", "--teacher_model_name=foreign", f"--images={shots}",
                 f"--eval_images={held}", "--teacher_input_scale=255", "--student_epochs=5",
                 "--num_mixup=4000", "--num_cvae=1000", "--cvae_epochs=50", "--compress=",
                 "--verbose=2", *extra],
                capture_output=True, text=True)
            report = json.loads(open(os.path.join(workdir, "report.json")).read())
            last = result.stderr.strip().splitlines()[-1] if result.returncode else "(exit 0)"
            lines.append(
                f"{name}: exit {result.returncode}, student {report['student_architecture']}, "
                f"{report['student_steps']} steps, BatchNorm layers re-estimated "
                f"{report['student_batchnorm_layers']}, training agreement "
                f"{report['student_training_agreement']:.4f}, served agreement "
                f"{report['student_served_agreement']:.4f}, held-out accuracy "
                f"{report['student_accuracy']:.4f}, fidelity {report['student_fidelity']:.4f}, "
                f"teacher accuracy {report['teacher_accuracy']}; last line: {last[:300]}")
            print(lines[-1], flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
