r"""Trains a teacher on a dataset's full training set and exports it in TF Serving's layout.

  python launch/train_teacher.py --export_base=/tmp/models/teacher
  python launch/serve.py --model_name=teacher --model_base_path=/tmp/models/teacher
"""

import sys

try:  # First, before TensorFlow is imported: the console filter (launch/console.py).
    from . import console
except ImportError:  # A script (python launch/x.py) or a file loaded by path: the installed one.
    from tfkd_launch import console

console.start(__name__, "tfkd-train-teacher")

from absl import app
from absl import flags

from tfkd import config
from tfkd import data
from tfkd import errors
from tfkd import teacher_setup
from tfkd.student import models

_RECIPE = config.TeacherTrainConfig()  # The flags' defaults: the library's, read from one place.
_RUN = config.DistillConfig(workdir="")

flags.DEFINE_string("export_base", "/tmp/tfkd_models/teacher", "Servable base path; the model goes "
                    "to <export_base>/<next version>/.")
flags.DEFINE_enum("dataset", _RUN.dataset, list(data.SUPPORTED_DATASETS), "Dataset.")
flags.DEFINE_string("data_dir", None, "Directory of IDX files (optional).")
flags.DEFINE_enum("architecture", _RECIPE.architecture, ["auto", *models.MODELS], "Teacher "
                  "architecture; auto: the paper's for the dataset.")
flags.DEFINE_integer("epochs", _RECIPE.epochs, "Training epochs.")
flags.DEFINE_integer("batch_size", _RECIPE.batch_size, "Batch size.")
flags.DEFINE_float("learning_rate", _RECIPE.learning_rate, "Adam learning rate.")
flags.DEFINE_integer("seed", _RUN.seed, "Seed.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity.")

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    recipe = config.TeacherTrainConfig(FLAGS.architecture, FLAGS.epochs, FLAGS.batch_size,
                                       FLAGS.learning_rate)
    try:
        recipe.validate()
        recipe = recipe.resolved(FLAGS.dataset)
        dataset = data.load_dataset(FLAGS.dataset, FLAGS.data_dir)
    except errors.TfkdError as e:
        sys.exit(f"error: {e}")
    result = teacher_setup.train_and_export_teacher(dataset, recipe, FLAGS.export_base,
                                                    FLAGS.seed, FLAGS.verbose)
    print(f"test_accuracy={result['test_accuracy']:.4f} export_dir={result['export_dir']}",
          flush=True)


def run():
    """The ``tfkd-train-teacher`` command."""
    app.run(main)


if __name__ == "__main__":
    run()
