"""The user's own images: folders of image files, file patterns, TFRecords of ``tf.train.Example``.

Everything here reads through ``tf.io.gfile`` and decodes in ``tf.data`` (``tf.io.decode_image``,
``tf.image.resize``), so a ``gs://`` bucket, HDFS or TensorFlow's ``ram://`` file system serves as
well as a local disk, and the files are decoded in parallel, never in a Python loop.

Sources (``--images`` and ``--eval_images``):
  * a directory: every file under it, nested folders included, whose extension is one of
    :data:`IMAGE_EXTENSIONS` (case-insensitive); folder names are ignored unless labels are asked
    for (:func:`load_labelled`: one sub-folder per class);
  * a file pattern (``/data/shots/*.png``, ``gs://bucket/img-*.jpg``): the files it matches;
  * TFRecord files (a path or pattern ending in one of :data:`TFRECORD_EXTENSIONS`): serialized
    ``tf.train.Example`` records, the encoded image bytes under a feature key (default
    ``image/encoded``, the TF Object Detection / TFDS convention).

Every image comes out float32 [H, W, C] in [0, 1] at the teacher's input size: decoded at its own
size and channels (PNG/JPEG/BMP/GIF; a GIF's first frame), alpha dropped, grey and colour converted
to C channels (ITU-R 601 luma for colour to grey), resized with area-weighted (antialiased)
bilinear filtering, and left untouched when it already has the size. An unreadable file (not an
image, truncated, empty) is counted and skipped; one warning names the first few.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import errors
from tfkd import fs

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfrec")
DEFAULT_IMAGE_KEY = "image/encoded"




@dataclasses.dataclass(frozen=True)
class ImageSourceConfig:
    """The user's own images, in place of a named dataset (``--images``).

    Attributes:
      path: the unlabeled images the student learns from (a source: module docstring). The run's
        ``num_shots`` of them are drawn uniformly (seeded; all of them when ``num_shots`` is 0).
      eval_path: held-out images to evaluate on, or None: with one sub-folder per class they give
        accuracy (and fidelity); a flat source gives fidelity only (the student's top-1 agreement
        with the teacher's, the measure of model extraction).
      image_key: the TFRecord feature of the encoded image bytes.
      height, width, channels: the size the images are brought to; None: the teacher's input
        shape from its signature metadata.
      class_names: a file of class names, one per line in the teacher's class order (names the
        evaluation sub-folders); None: see :func:`class_order`.
    """

    path: str
    eval_path: str | None = None
    image_key: str = DEFAULT_IMAGE_KEY
    height: int | None = None
    width: int | None = None
    channels: int | None = None
    class_names: str | None = None

    def validate(self) -> None:
        """Raises :class:`tfkd.errors.ConfigError` naming the first field out of range
        (:class:`tfkd.errors.ImageSourceError` for a class-name file that is not there)."""
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise errors.ConfigError(f"images.{name}={value!r}: expected >= 1")
        if self.channels not in (None, 1, 3):
            raise errors.ConfigError(f"images.channels={self.channels!r}: expected 1 or 3")
        if not self.path:
            raise errors.ConfigError("images.path='': expected a directory, pattern or TFRecord "
                                     "path")
        if self.class_names and not tf.io.gfile.exists(self.class_names):
            raise errors.ImageSourceError(f"class_names={self.class_names!r}: no such file (expected one "
                                   "class name per line, in the teacher's order)")

    def image_shape(self, teacher_input_shape: tuple) -> tuple[int, int, int]:
        """(H, W, C) the images become: this config's overrides, else the teacher's input shape
        (metadata ``[batch, H, W, C]`` or ``[batch, H, W]``; -1 for unknown dimensions).

        Raises:
          tfkd.errors.ImageSourceError: a dimension neither the teacher's metadata nor this config gives.
        """
        dims = list(teacher_input_shape[1:]) if len(teacher_input_shape) in (3, 4) else []
        taught = (dims + [1])[:3] if len(dims) == 2 else (dims or [-1, -1, -1])
        shape = [self.height or taught[0], self.width or taught[1], self.channels or taught[2]]
        if min(shape) < 1:
            raise errors.ImageSourceError(
                f"images: the teacher's input shape {list(teacher_input_shape)} does not say the "
                f"image size; give it (images.height, images.width, images.channels); got "
                f"{shape}")
        return tuple(int(d) for d in shape)


@dataclasses.dataclass(frozen=True)
class LoadedImages:
    """Images read from a source.

    Attributes:
      images: float32 [n, H, W, C] in [0, 1].
      names: str [n]: each image's file (a TFRecord image: ``file#record``).
      labels: int64 [n] in [0, K), or None for unlabeled images.
      skipped: the unreadable files (or records), in source order.
      pool: files (or records) in the source, read or not.
      seconds: wall-clock seconds of reading, decoding and resizing.
    """

    images: np.ndarray
    names: tuple
    labels: np.ndarray | None = None
    skipped: tuple = ()
    pool: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return round((len(self.images) + len(self.skipped)) / max(self.seconds, 1e-9), 1)


def is_tfrecord(path: str) -> bool:
    """Whether ``path`` (a file or pattern) names TFRecord files (by extension)."""
    return path.lower().endswith(TFRECORD_EXTENSIONS)


def list_files(path: str) -> list[str]:
    """The files of a source, sorted: a directory's image files (recursively), or what a pattern
    or single file names.

    Raises:
      tfkd.errors.ImageSourceError: nothing matched, or the directory holds no image file.
    """
    if tf.io.gfile.isdir(path):
        files = [f for f in fs.walk_files(path) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            kinds = ", ".join(IMAGE_EXTENSIONS)
            raise errors.ImageSourceError(f"images={path!r}: expected image files ({kinds}) in the "
                                   "directory or its sub-folders; found none")
    else:
        files = tf.io.gfile.glob(path)
        if not files:
            raise errors.ImageSourceError(f"images={path!r}: expected a directory, a file or a pattern "
                                   "matching files; nothing matched")
    return sorted(files)


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [h, w, n] (n in 1..4) -> uint8 [h, w, channels], alpha dropped."""
    n = tf.shape(image)[-1]
    image = image[..., :tf.where((n == 2) | (n == 4), n - 1, n)]  # 1 (grey) or 3 (colour).
    grey = tf.equal(tf.shape(image)[-1], 1)
    if channels == 3:
        image = tf.cond(grey, lambda: tf.image.grayscale_to_rgb(image), lambda: image)
    else:
        image = tf.cond(grey, lambda: image, lambda: tf.image.rgb_to_grayscale(image))
    image.set_shape([None, None, channels])
    return image


MAX_IMAGE_PIXELS = 64_000_000
"""Images declaring more pixels than this (8000 x 8000) are skipped unread, as unreadable files are:
a 389 KB "decompression bomb" PNG of 20000 x 20000 once decoded to 2.6 GB."""


def declared_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """The pixels (height x width, int64 scalar) an encoded image's header declares, read without
    decoding it: PNG (IHDR), GIF (logical screen), BMP (info header), JPEG (its SOF marker); 0 for
    other bytes (decoding then fails on its own)."""
    head = tf.io.decode_raw(tf.strings.substr(tf.strings.join([encoded, "\0" * 32]), 0, 32),
                            tf.uint8)
    b = tf.cast(head, tf.int64)

    def big(i):
        return ((b[i] * 256 + b[i + 1]) * 256 + b[i + 2]) * 256 + b[i + 3]

    def little(i):
        return ((b[i + 3] * 256 + b[i + 2]) * 256 + b[i + 1]) * 256 + b[i]

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(encoded), tf.int64)
        return shape[0] * shape[1]

    def bmp():
        h = little(22)
        return little(18) * tf.where(h >= 2 ** 31, 2 ** 32 - h, h)  # Top-down BMPs: negative h.

    starts = lambda *magic: tf.reduce_all(tf.equal(b[:len(magic)], magic))  # noqa: E731
    return tf.case([(starts(0x89, 0x50, 0x4E, 0x47), lambda: big(16) * big(20)),
                    (starts(0x47, 0x49, 0x46), lambda: (b[6] + 256 * b[7]) * (b[8] + 256 * b[9])),
                    (starts(0x42, 0x4D), bmp), (starts(0xFF, 0xD8), jpeg)],
                   default=lambda: tf.constant(0, tf.int64))


def decode(encoded: tf.Tensor, image_shape: tuple) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes (scalar string) -> float32 [H, W, C] in [0, 1].

    Raises (as a ``tf.data`` error, so that the image is skipped as unreadable):
      InvalidArgumentError: undecodable bytes, or a header declaring more than
        :data:`MAX_IMAGE_PIXELS` pixels (checked before decoding).
    """
    height, width, channels = image_shape
    tf.debugging.assert_less_equal(declared_pixels(encoded), tf.constant(MAX_IMAGE_PIXELS, tf.int64),
                                   message="image larger than MAX_IMAGE_PIXELS")
    image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    image = tf.image.convert_image_dtype(_to_channels(image, channels), tf.float32)
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
    image = tf.cond(same, lambda: image, lambda: tf.clip_by_value(
        tf.image.resize(image, [height, width], antialias=True), 0.0, 1.0))
    image.set_shape([height, width, channels])
    return image


def _check_image_key(files: list[str], image_key: str) -> None:
    """Raises ImageSourceError naming the key and the features there when the first record of
    the TFRecord files has no bytes feature ``image_key``."""
    for record in tf.data.TFRecordDataset(files).take(1):
        example = tf.train.Example.FromString(record.numpy())
        feature = example.features.feature
        if image_key not in feature or not feature[image_key].bytes_list.value:
            found = ", ".join(f"{k} ({v.WhichOneof('kind')})" for k, v in sorted(feature.items()))
            raise errors.ImageSourceError(f"image_key={image_key!r}: the first record of {files[0]} has "
                                   f"no bytes feature by that name; it has: {found or 'none'} "
                                   "(images.image_key names the encoded image)")


def _source(path: str, image_key: str) -> tuple[list[str], callable]:
    """(the name of each image of the source, ``make(indices) -> tf.data.Dataset`` of (index int64,
    encoded bytes) for those indices, in order). A file source reads only the files asked for."""
    files = list_files(path)
    if not is_tfrecord(path):
        def make(indices):
            chosen = [files[i] for i in indices]
            return tf.data.Dataset.from_tensor_slices((indices, chosen)).map(
                lambda i, f: (i, tf.io.read_file(f)), num_parallel_calls=tf.data.AUTOTUNE)
        return files, make
    names = []
    for f in files:
        n = int(tf.data.TFRecordDataset(f).reduce(np.int64(0), lambda c, _: c + 1))
        names += [f"{f}#{i}" for i in range(n)]
    _check_image_key(files, image_key)
    features = {image_key: tf.io.FixedLenFeature([], tf.string, default_value="")}

    def make(indices):
        wanted = tf.constant(np.isin(np.arange(len(names)), indices))
        records = tf.data.Dataset.zip(tf.data.Dataset.range(len(names)),
                                      tf.data.TFRecordDataset(files))
        return records.filter(lambda i, _: tf.gather(wanted, i)).map(
            lambda i, r: (i, tf.io.parse_single_example(r, features)[image_key]))
    return names, make


def load_images(path: str, image_shape: tuple, image_key: str = DEFAULT_IMAGE_KEY,
                select: np.ndarray | None = None, batch_size: int = 256,
                what: str = "images") -> LoadedImages:
    """Reads, decodes and resizes a source's images in ``tf.data``.

    Args:
      path: a directory, file pattern or TFRecord path/pattern (module docstring).
      image_shape: (H, W, C), C in {1, 3}: what the images become (the teacher's input).
      image_key: the TFRecord feature holding the encoded bytes.
      select: int [m] indices into the source's files (or records) to read; or a function of
        the source's size returning them (or None), so that the source is listed once; None: all.
      batch_size: images decoded per batch.
      what: the flag, for messages.

    Returns:
      :class:`LoadedImages` (unlabeled), in source order.

    Raises:
      tfkd.errors.ImageSourceError: nothing matched, or no image of the source could be decoded.
      tfkd.errors.ConfigError: ``image_shape`` not (H, W, 1 or 3) with H, W >= 1 (the teacher's
        input shape, or the images.height/width/channels settings).
    """
    start = time.perf_counter()
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape[:2]) < 1 or shape[2] not in (1, 3):
        raise errors.ConfigError(f"image_shape={image_shape!r}: expected (H, W, C) with C 1 or 3")
    names, make = _source(path, image_key)
    if callable(select):
        select = select(len(names))
    indices = np.arange(len(names)) if select is None else np.sort(np.asarray(select, np.int64))
    ds = (make(indices).map(lambda i, b: (i, decode(b, shape)), num_parallel_calls=tf.data.AUTOTUNE)
          .ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE))
    got, images = [], []
    for i, x in ds:
        got.append(i.numpy())
        images.append(x.numpy())
    got = np.concatenate(got) if got else np.zeros([0], np.int64)
    skipped = tuple(names[i] for i in np.setdiff1d(indices, got))
    if skipped:
        logging.warning("%s=%s: %d of %d files could not be read as images (undecodable, or "
                        "over %d pixels) and were skipped (e.g. %s)", what, path, len(skipped),
                        len(indices), MAX_IMAGE_PIXELS, ", ".join(skipped[:5]))
    if not len(got):
        raise errors.ImageSourceError(f"{what}={path!r}: expected decodable images; none of its "
                               f"{len(indices)} files could be read (e.g. {', '.join(skipped[:3])})")
    return LoadedImages(np.concatenate(images).astype(np.float32),
                        tuple(names[i] for i in got), None, skipped, len(names),
                        round(time.perf_counter() - start, 3))


def count(path: str, image_key: str = DEFAULT_IMAGE_KEY) -> int:
    """How many files (or TFRecord records) a source has, without decoding them."""
    return len(_source(path, image_key)[0])


def read_class_names(path: str) -> tuple[str, ...]:
    """A class-name file: one name per line, in the teacher's class order (blank lines ignored).

    Raises:
      tfkd.errors.ImageSourceError: no name, or a name twice.
    """
    with tf.io.gfile.GFile(path) as f:
        names = tuple(line.strip() for line in f if line.strip())
    if not names or len(set(names)) != len(names):
        raise errors.ImageSourceError(f"class_names={path!r}: expected one distinct class name per line; "
                               f"got {len(names)} lines, {len(set(names))} distinct")
    return names


def label_folders(path: str) -> list[str]:
    """The sub-folders of a directory (sorted), or [] for a flat folder, pattern or TFRecord."""
    if not tf.io.gfile.isdir(path):
        return []
    return sorted(d for d in fs.listdir(path) if fs.isdir(os.path.join(path, d)))


def class_order(folders: list[str], num_classes: int,
                class_names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The teacher's class order for labelled folders.

    ``class_names`` (e.g. :func:`read_class_names`) if given; else folders named 0..K-1 by class
    index; else the folder names sorted (the convention of
    ``keras.utils.image_dataset_from_directory``), with a warning: only the teacher's owner knows
    its order.

    Raises:
      tfkd.errors.ImageSourceError: a folder that is not a class name, or more folders than classes.
    """
    if class_names is not None:
        if len(class_names) != num_classes:
            raise errors.ImageSourceError(f"class_names: expected {num_classes} names (the teacher's "
                                   f"classes), got {len(class_names)}")
        unknown = sorted(set(folders) - set(class_names))
        if unknown:
            raise errors.ImageSourceError(f"eval_images: sub-folders {unknown} are not class names "
                                   f"(expected some of {list(class_names)})")
        return tuple(class_names)
    if all(f.isdigit() for f in folders):
        ids = [int(f) for f in folders]
        if max(ids) >= num_classes:
            raise errors.ImageSourceError(f"eval_images: sub-folder {max(ids)} is not a class index in "
                                   f"[0, {num_classes})")
        return tuple(str(i) for i in range(num_classes))
    if len(folders) != num_classes:
        raise errors.ImageSourceError(
            f"eval_images: {len(folders)} sub-folders for a teacher of {num_classes} classes and "
            "no class_names file to say which is which; give images.class_names (one name per line, "
            "the teacher's order)")
    logging.warning("eval_images: no class_names file; taking the sub-folders in sorted order as the "
                    "teacher's classes 0..%d (%s)", num_classes - 1, ", ".join(folders))
    return tuple(folders)


def load_labelled(path: str, image_shape: tuple, num_classes: int,
                  class_names: tuple[str, ...] | None = None,
                  what: str = "eval_images") -> tuple[LoadedImages, tuple[str, ...] | None]:
    """Images with labels from one sub-folder per class, or unlabeled from a flat source.

    Returns:
      (:class:`LoadedImages` with ``labels`` int64 [n] in [0, num_classes) when ``path`` has class
      sub-folders, else None; the class order used, or None when unlabeled).

    Raises:
      tfkd.errors.ImageSourceError: see :func:`load_images` and :func:`class_order`.
    """
    folders = label_folders(path)
    if not folders:
        return load_images(path, image_shape, what=what), None
    order = class_order(folders, num_classes, class_names)
    loaded = load_images(path, image_shape, what=what)
    root = path.rstrip("/") + "/"
    index = {name: i for i, name in enumerate(order)}
    labels = []
    for name in loaded.names:
        folder = name[len(root):].split("/", 1)[0] if name.startswith(root) else ""
        if folder not in index:
            raise errors.ImageSourceError(f"{what}={path!r}: {name} is not in a class sub-folder "
                                   f"(expected one of {list(order)})")
        labels.append(index[folder])
    return dataclasses.replace(loaded, labels=np.asarray(labels, np.int64)), order


def write_png_folder(images: np.ndarray, directory: str, labels: np.ndarray | None = None,
                     class_names: tuple[str, ...] | None = None) -> list[str]:
    """Writes float32 [n, H, W, C] images in [0, 1] as PNG files (``<directory>/[<class>/]<i>.png``),
    one sub-folder per class when ``labels`` are given. For tests, benchmarks and examples.

    Returns:
      the paths written, in image order.
    """
    paths = []
    for i, image in enumerate(np.asarray(images)):
        folder = directory
        if labels is not None:
            label = int(labels[i])
            folder = os.path.join(directory, class_names[label] if class_names else str(label))
        tf.io.gfile.makedirs(folder)
        pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
        path = os.path.join(folder, f"{i:06d}.png")
        tf.io.write_file(path, tf.io.encode_png(pixels))
        paths.append(path)
    return paths
