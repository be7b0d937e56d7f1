"""Run in a fresh process: two logical CPU devices must be configured before TensorFlow starts.

Trains the same student on the same data and seed with MirroredStrategy over 2 logical CPU devices
(per-replica batch 32) and over 1 device (batch 64): the global batch is equal, so the losses must
agree. Prints one JSON line: {"loop": ..., "two": [...], "one": [...]}.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import numpy as np  # noqa: E402

from tfkd import data  # noqa: E402
from tfkd import distribute  # noqa: E402
from tfkd import student as student_lib  # noqa: E402

loop = sys.argv[1]
ds = data.load_dataset("fashion_mnist")
images = ds.x_train[:1280]
soft = np.eye(10, dtype=np.float32)[ds.y_train[:1280]] * 0.91 + 0.009
base = dict(epochs=2, mixup_alpha=0, rotation_degrees=0, shift_fraction=0, loop=loop)
two = distribute.make_strategy("mirrored", ["/cpu:0", "/cpu:1"])
one = distribute.make_strategy("mirrored", ["/cpu:0"])
assert two.num_replicas_in_sync == 2 and one.num_replicas_in_sync == 1
_, h2 = student_lib.train_student(images, soft, student_lib.StudentConfig(batch_size=32, **base).resolved(),
                              seed=0, strategy=two, verbose=0)
_, h1 = student_lib.train_student(images, soft, student_lib.StudentConfig(batch_size=64, **base).resolved(),
                              seed=0, strategy=one, verbose=0)
print(json.dumps({"loop": loop, "two": [float(x) for x in h2["loss"]],
                  "one": [float(x) for x in h1["loss"]]}))
