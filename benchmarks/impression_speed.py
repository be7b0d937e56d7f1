r"""Seconds per 1,000 Data Impressions on this machine: the white-box search (the teacher's
SavedModel in-process, one compiled loop per batch) and the black-box one (the teacher served
over loopback gRPC, 2q probes per impression and step), each timed on a short run and scaled to
its full number of steps.

  python benchmarks/impression_speed.py [--steps=100] [--teacher=runs/.../teacher]

Prints one line per search: impressions, steps timed, seconds, and seconds per 1,000 impressions
at the full step count (1,500 white-box; the black-box default 100), and queries per second.
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import serving  # noqa: E402
from tfkd import teacher as teacher_lib  # noqa: E402
from tfkd import teacher_setup  # noqa: E402
from tfkd.methods.zskd import blackbox
from tfkd.methods.zskd import impressions  # noqa: E402
from tfkd.methods.zskd import whitebox

flags.DEFINE_string("teacher", "runs/reproduce/fashion_mnist/teacher_tries/lenet5_same_cosine/"
                    "teacher", "The teacher's TF Serving base path (numeric versions under it).")
flags.DEFINE_integer("steps", 100, "Steps timed per search.")
FLAGS = flags.FLAGS


def main(_):
    version_dir = teacher_setup.saved_model_dir(FLAGS.teacher)
    teacher = whitebox.SavedModelTeacher(version_dir)
    similarity = impressions.class_similarity(teacher.final_layer_weights())
    white = impressions.config_for("fashion_mnist", count=2000, iterations=FLAGS.steps, batch_size=100)
    warmup = impressions.config_for("fashion_mnist", count=2000, iterations=2, batch_size=100)
    impressions.synthesize(teacher.logits, teacher.image_shape, similarity, warmup, 0)
    start = time.perf_counter()
    impressions.synthesize(teacher.logits, teacher.image_shape, similarity, white, 1)
    seconds = time.perf_counter() - start
    print(f"white-box: 2,000 impressions x {FLAGS.steps} steps in {seconds:.1f} s: "
          f"{seconds / 2 * 1500 / FLAGS.steps:.0f} s per 1,000 impressions at 1,500 steps")
    black = impressions.config_for("", blackbox=True, count=2000, iterations=FLAGS.steps // 4)
    zo = blackbox.ZerothOrderConfig()
    with serving.ModelServer([serving.ModelConfig("teacher", FLAGS.teacher)], poll_seconds=0) as srv:
        with teacher_lib.connect(srv.target) as client:
            start = time.perf_counter()
            blackbox.synthesize_blackbox(
                lambda x: client.probe(x, "zskd_probes"), lambda x: client.soft_labels(x),
                teacher.image_shape, teacher.num_classes, black, zo, 0)
            seconds = time.perf_counter() - start
            queries = client.queries
    full = impressions.BLACKBOX_DEFAULTS["iterations"]
    print(f"black-box: 2,000 impressions x {black.iterations} steps in {seconds:.1f} s "
          f"({queries:,} queries, {queries / seconds:,.0f} per s): "
          f"{seconds / 2 * full / black.iterations:.0f} s per 1,000 impressions at {full} steps")


if __name__ == "__main__":
    app.run(main)
