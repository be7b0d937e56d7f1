"""Images per second of tfkd's input pipeline (tfkd.images.load_images: list, read, decode,
convert, resize in tf.data) on the PNG folders written by benchmarks/images_vs_idx.py.

  python benchmarks/image_pipeline_speed.py      # after images_vs_idx.py has written runs/images/png

Prints one line per case: files, seconds, images per second (listing included).
"""
import os
import time

import numpy as np

from tfkd import images

POOL, TEST = "runs/images/png/pool", "runs/images/png/test"


def case(name, path, shape, select=None):
    start = time.perf_counter()
    loaded = images.load_images(path, shape, select=select)
    seconds = time.perf_counter() - start
    print(f"{name:<44} {len(loaded.images):>6} images {seconds:7.2f} s "
          f"{len(loaded.images) / seconds:8.0f} images/s", flush=True)


def main():
    if not os.path.isdir(POOL):
        raise SystemExit(f"{POOL}: run benchmarks/images_vs_idx.py first")
    print(f"{os.cpu_count()} CPU cores; other jobs on the machine: see the caller's note")
    draw = np.random.default_rng(0).choice(images.count(POOL), 2000, replace=False)
    case("2,000 drawn of 55,000 PNG, 28x28x1", POOL, (28, 28, 1), draw)
    case("10,000 PNG in class folders, 28x28x1", TEST, (28, 28, 1))
    case("10,000 PNG, resized to 64x64x3", TEST, (64, 64, 3))
    case("2,000 drawn PNG, resized to 224x224x3", POOL, (224, 224, 3), draw)


if __name__ == "__main__":
    main()
