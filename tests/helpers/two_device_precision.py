"""Run in a fresh process: two logical CPU devices must be configured before TensorFlow starts.

Trains a student under MirroredStrategy over 2 logical CPU devices with a mixed dtype policy and
without XLA (``python two_device_precision.py POLICY LOOP``; XLA over two CPU devices is refused
first, with its message). Prints one JSON line: the per-epoch losses, the replicas, the exported
model's variable and output dtypes, its accuracy on the images, and the refusal.
"""

import dataclasses
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

policy, loop = sys.argv[1], sys.argv[2]
ds = data.load_dataset("fashion_mnist")
images, labels = ds.x_train[:1280], ds.y_train[:1280]
soft = np.eye(10, dtype=np.float32)[labels] * 0.91 + 0.009
strategy = distribute.make_strategy("mirrored", ["/cpu:0", "/cpu:1"])
config = student_lib.StudentConfig(batch_size=32, epochs=3, mixup_alpha=0, rotation_degrees=0,
                                shift_fraction=0, loop=loop, mixed_precision=policy,
                                jit_compile=True).resolved()
try:
    student_lib.train_student(images, soft, config, seed=0, strategy=strategy, verbose=0)
    refusal = None
except ValueError as e:
    refusal = str(e)
config = dataclasses.replace(config, jit_compile=False)
student, history = student_lib.train_student(images, soft, config, seed=0, strategy=strategy,
                                          verbose=0)
logits = student.predict(images, verbose=0)
print(json.dumps({
    "loss": [float(x) for x in history["loss"]], "replicas": strategy.num_replicas_in_sync,
    "variable_dtypes": sorted({w.dtype for w in student.weights}),
    "compute_dtypes": sorted({layer.compute_dtype for layer in student.layers}),
    "output_dtype": str(logits.dtype), "accuracy": float(np.mean(logits.argmax(1) == labels)),
    "refusal": refusal,
    "learning_rate": student_lib.scaled_learning_rate(config, strategy.num_replicas_in_sync)}))
