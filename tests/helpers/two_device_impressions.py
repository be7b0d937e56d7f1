"""Run in a fresh process: two logical CPU devices must be configured before TensorFlow starts.

Makes the same Data Impressions (a small fixed linear teacher, 6 batches of 4) under MirroredStrategy
over 2 logical CPU devices and over 1. Each replica searches its own batch; batch i's noise and
targets come from (seed, i) alone, so both must give the same impressions. Prints one JSON line:
{"replicas": [2, 1], "max_difference": ..., "same_classes": ...}.
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

from tfkd import distribute  # noqa: E402
from tfkd.methods.zskd import impressions  # noqa: E402

w = tf.constant(np.random.default_rng(0).normal(size=(36, 3)) * 30, tf.float32)


def logits(images):
    return tf.reshape(images, [-1, 36]) @ w


similarity = impressions.class_similarity(np.random.default_rng(1).normal(size=(5, 3)))
config = impressions.ImpressionConfig(count=24, iterations=50, batch_size=4, learning_rate=0.01)
out = {}
for devices in (["/cpu:0", "/cpu:1"], ["/cpu:0"]):
    strategy = distribute.make_strategy("mirrored", devices)
    out[len(devices)] = impressions.synthesize(logits, (6, 6, 1), similarity, config, seed=2,
                                               strategy=strategy) + (strategy.num_replicas_in_sync,)
print(json.dumps({"replicas": [out[2][4], out[1][4]],
                  "max_difference": float(np.abs(out[2][0] - out[1][0]).max()),
                  "same_classes": bool((out[2][2] == out[1][2]).all())}))
