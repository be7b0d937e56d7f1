r"""Throughput of DB3KD's boundary search against a teacher served over gRPC.

Serves a teacher SavedModel with tfkd's server on a loopback port, reads it through its label-only
view, and runs the ``bd`` search (:func:`tfkd.methods.db3kd.boundary.boundary_distances`) of N few-shot images
toward each other; prints the teacher queries, the seconds and the queries per second.

  python benchmarks/boundary_search.py \
      --teacher_base=runs/reproduce/fashion_mnist/teacher_tries/lenet5_same_cosine/teacher
  python benchmarks/boundary_search.py --teacher_base=... --num_shots=2000 --directions=20
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

from tfkd import data
from tfkd import serving
from tfkd import teacher
from tfkd.methods.db3kd import boundary

flags.DEFINE_string("teacher_base", None, "Base path of the teacher SavedModel (numeric versions).",
                    required=True)
flags.DEFINE_integer("num_shots", 100, "Images searched (balanced few-shot sample).")
flags.DEFINE_integer("directions", 3, "Directions per (image, class) pair.")
flags.DEFINE_float("tolerance", 1e-5, "Binary-search tolerance.")
flags.DEFINE_integer("max_in_flight", 4, "Predict requests in flight.")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    dataset = data.load_dataset("fashion_mnist")
    indices = data.few_shot_indices(dataset.y_train, FLAGS.num_shots, dataset.num_classes, 0)
    images = dataset.x_train[indices]
    config = boundary.BoundaryConfig(num_directions=FLAGS.directions, tolerance=FLAGS.tolerance)
    with serving.ModelServer([serving.ModelConfig("teacher", FLAGS.teacher_base)],
                             poll_seconds=0) as server:
        with teacher.connect(server.target, label_only=True,
                             max_in_flight=FLAGS.max_in_flight) as client:
            client.expect_num_classes(dataset.num_classes)
            labels = client.top1(images, "label_real")
            start, before = time.perf_counter(), client.account.total
            distances = boundary.boundary_distances(images, labels, images, labels,
                                                    dataset.num_classes, client.top1, config)
            seconds, queries = time.perf_counter() - start, client.account.total - before
    pairs = FLAGS.num_shots * (dataset.num_classes - 1)
    finite = distances[distances < float("inf")]
    print(f"images {FLAGS.num_shots}, pairs {pairs}, directions {FLAGS.directions}, "
          f"tolerance {FLAGS.tolerance:g}")
    print(f"queries {queries:,} ({queries / pairs / FLAGS.directions:.1f} per pair and direction), "
          f"{seconds:.1f} s, {queries / seconds:,.0f} queries/s")
    print(f"mean bd distance {finite.mean():.3f} (pixel scale [0, 1], L2), requests "
          f"{client.requests}")


if __name__ == "__main__":
    app.run(main)
