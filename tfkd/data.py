"""Datasets: their specs (one registry), their sources, few-shot sampling and validation splits.

Every image array this module hands out is float32 NHWC with values in [0, 1]; every label array is
int64 of shape [n] with values in [0, num_classes).

Everything tfkd knows about a named dataset is its :class:`DatasetSpec` (image shape, classes, the
paper's architectures and counts, its sources), registered by name (:func:`register_dataset`):
adding a dataset is one registration. Sources, in order (:func:`load_dataset`):
  1. an explicit ``data_dir`` holding the four IDX files (``train-images-idx3-ubyte[.gz]`` ...),
  2. the spec's ``local_dir`` (the Debian package ``dataset-fashion-mnist``:
     ``/usr/share/datasets/fashion-mnist``),
  3. the spec's ``download`` (``keras.datasets``: downloads when online; offline it fails with
     :class:`tfkd.errors.DatasetUnavailableError`).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib
from typing import Callable

import numpy as np

from tfkd import errors

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

CVAE_ARCHITECTURES = ("mlp", "conv")


def cvae_architecture_for(image_shape: tuple) -> str:
    """The CVAE for images of ``image_shape`` (H, W, C): ``mlp`` (the FS-BBT code's) up to 28x28
    grey, else ``conv`` (:class:`tfkd.methods.fsbbt.synthesis.CVAEConfig`)."""
    h, w, c = (int(d) for d in image_shape)
    return "mlp" if h * w <= 28 * 28 and c == 1 else "conv"


@dataclasses.dataclass(frozen=True)
class KerasDownload:
    """``keras.datasets.<module>.load_data()``: downloads when online (cached in ``~/.keras``)."""

    module: str
    source = "keras.datasets"  # What Dataset.source says (a class attribute, not a field).

    def __call__(self) -> tuple:
        import keras  # Imported lazily: reading IDX files needs no TensorFlow.

        return getattr(keras.datasets, self.module).load_data()


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything tfkd knows about one named dataset (:func:`register_dataset`).

    Attributes:
      name: the dataset's name (``DistillConfig.dataset``), an identifier.
      image_shape: (H, W, C) of one image; :func:`load_dataset` refuses images of another shape.
      num_classes: K, the number of classes (>= 2).
      teacher, student: the paper's teacher and student architectures (names in
        :data:`tfkd.student.models.MODELS`; FS-BBT Table 1), the defaults of
        ``teacher_train.architecture`` and ``student.architecture`` (and of the FS-BBT teacher
        assistant, ``active.assistant``).
      class_names: K names in class order; empty: ``"0"``, ``"1"``, ...
      num_shots: the paper's N, the few shots' default (``DistillConfig.num_shots``).
      num_validation: training images held out as the validation split by default
        (``DistillConfig.num_validation``).
      zskd_impressions: the ZSKD paper's number of Data Impressions (its Tables 1-3; 48,000, the
        Fashion-MNIST count, where the paper has none), ``zskd.count``'s default.
      cvae_architecture: the FS-BBT CVAE's architecture (``mlp`` or ``conv``), ``cvae.architecture``'s
        default; empty: :func:`cvae_architecture_for` the image shape.
      local_dir: a directory of the four IDX files (MNIST layout) read when it exists and no
        ``data_dir`` is given (a Debian package's), or None.
      download: ``download() -> ((x_train, y_train), (x_test, y_test))``, uint8 images [n, H, W] or
        [n, H, W, C] and integer labels [n] (``keras.datasets``' ``load_data``:
        :class:`KerasDownload`), called when no local copy exists; None: none. Its ``source``
        attribute, if any, is what ``Dataset.source`` says (else ``<name> download``).
      install_hint: appended to the message when no source can be read (``" or `apt-get install
        ...`"``).

    Raises (on construction):
      tfkd.errors.ConfigError: a field out of range (named ``dataset_spec.<field>``).
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    teacher: str
    student: str
    class_names: tuple[str, ...] = ()
    num_shots: int = 2000
    num_validation: int = 5000
    zskd_impressions: int = 48_000
    cvae_architecture: str = ""
    local_dir: str | None = None
    download: Callable[[], tuple] | None = None
    install_hint: str = ""

    def __post_init__(self):
        shape = tuple(self.image_shape)
        errors.check_settings("dataset_spec.", self, [
            ("name", isinstance(self.name, str) and self.name.isidentifier(), "an identifier"),
            ("image_shape", len(shape) == 3 and all(isinstance(d, int) and d >= 1 for d in shape),
             "(H, W, C), each an int >= 1"),
            ("num_classes", self.num_classes >= 2, ">= 2"),
            ("class_names", len(self.class_names) in (0, self.num_classes),
             f"{self.num_classes} names (num_classes) or none"),
            ("num_shots", self.num_shots >= 1, ">= 1"),
            ("num_validation", self.num_validation >= 0, ">= 0"),
            ("zskd_impressions", self.zskd_impressions >= 1, ">= 1"),
            ("cvae_architecture", self.cvae_architecture in ("", *CVAE_ARCHITECTURES),
             f"'' (by the image shape) or one of {CVAE_ARCHITECTURES}"),
        ])
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "class_names", tuple(self.class_names)
                           or tuple(str(i) for i in range(self.num_classes)))
        object.__setattr__(self, "cvae_architecture",
                           self.cvae_architecture or cvae_architecture_for(shape))


_SPECS: dict[str, DatasetSpec] = {}

SUPPORTED_DATASETS: tuple[str, ...] = ()
"""The registered dataset names, in registration order (rebound by :func:`register_dataset`: read
it as ``tfkd.data.SUPPORTED_DATASETS``, or call :func:`dataset_names`)."""


def register_dataset(spec: DatasetSpec, replace: bool = False) -> DatasetSpec:
    """Registers ``spec`` under ``spec.name``: the dataset can then be named by every part of tfkd
    (``DistillConfig(dataset=...)``, ``--dataset``) and its defaults come from it. Returns it.

    Raises:
      tfkd.errors.ConfigError: the name is taken (unless ``replace``).
      TypeError: not a :class:`DatasetSpec` (the caller's bug).
    """
    global SUPPORTED_DATASETS
    if not isinstance(spec, DatasetSpec):
        raise TypeError(  # Programming error: the caller registers an object, not a spec.
            f"spec: expected a tfkd.data.DatasetSpec, got {type(spec).__name__}")
    if spec.name in _SPECS and not replace:
        raise errors.ConfigError(f"dataset {spec.name!r} is already registered; pass replace=True "
                                 "to replace it")
    _SPECS[spec.name] = spec
    SUPPORTED_DATASETS = tuple(_SPECS)
    return spec


def unregister_dataset(name: str) -> DatasetSpec:
    """Removes a registered dataset and returns its spec (a test's or plug-in's clean-up).

    Raises:
      tfkd.errors.ConfigError: no such dataset.
    """
    global SUPPORTED_DATASETS
    spec = dataset_spec(name)
    del _SPECS[name]
    SUPPORTED_DATASETS = tuple(_SPECS)
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name``.

    Raises:
      tfkd.errors.ConfigError: no such dataset (the registered names are listed).
    """
    if name not in _SPECS:
        raise errors.ConfigError(f"dataset={name!r}: expected one of {SUPPORTED_DATASETS}")
    return _SPECS[name]


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, in registration order."""
    return tuple(_SPECS)


_DIGITS = tuple(str(i) for i in range(10))
register_dataset(DatasetSpec(
    "fashion_mnist", (28, 28, 1), 10, "lenet5", "lenet5_half",
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    zskd_impressions=48_000, cvae_architecture="mlp",
    local_dir="/usr/share/datasets/fashion-mnist", download=KerasDownload("fashion_mnist"),
    install_hint=" or `apt-get install -y dataset-fashion-mnist`"))
register_dataset(DatasetSpec(
    "mnist", (28, 28, 1), 10, "lenet5", "lenet5_half", class_names=_DIGITS,
    zskd_impressions=24_000, cvae_architecture="mlp", local_dir="/usr/share/datasets/mnist",
    download=KerasDownload("mnist")))
register_dataset(DatasetSpec(
    "cifar10", (32, 32, 3), 10, "alexnet", "alexnet_half",
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"),
    zskd_impressions=40_000, cvae_architecture="conv", download=KerasDownload("cifar10")))
register_dataset(DatasetSpec(
    "cifar100", (32, 32, 3), 100, "resnet32", "resnet20", num_shots=5000,
    cvae_architecture="conv", download=KerasDownload("cifar100")))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled image-classification dataset held in memory.

    Attributes:
      name: dataset name, e.g. ``"fashion_mnist"``.
      x_train: float32 [n_train, H, W, C] in [0, 1].
      y_train: int64 [n_train] in [0, num_classes).
      x_test: float32 [n_test, H, W, C] in [0, 1].
      y_test: int64 [n_test].
      num_classes: number of classes.
      source: where it was read from (a directory, ``"keras.datasets"``: its spec's source).
      x_val: float32 [n_val, H, W, C] in [0, 1], or None: the validation split, held out of
        ``x_train`` by :func:`with_validation_split` (used for choices and monitoring, never the test
        split).
      y_val: int64 [n_val], or None.
      classes: the class names, or None for the dataset's own (its :class:`DatasetSpec`'s).

    A dataset of the user's own images (:mod:`tfkd.images`) has ``y_train`` None (the few shots are
    unlabeled) and ``y_test`` None when its evaluation images are unlabeled.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    classes: tuple | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.x_train.shape[1:])

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.classes is not None:
            return tuple(self.classes)
        spec = _SPECS.get(self.name)
        if spec is not None and spec.num_classes == self.num_classes:
            return spec.class_names
        return tuple(str(i) for i in range(self.num_classes))


def _read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (optionally gzip-compressed) into a numpy array of its stored dtype."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
        raise errors.DatasetUnavailableError(f"{path}: cannot read it ({type(e).__name__}: "
                                      f"{' '.join(str(e).split())})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise errors.DatasetUnavailableError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    type_code, ndim = raw[2], raw[3]
    if type_code != 0x08:
        raise errors.DatasetUnavailableError(f"{path}: expected unsigned-byte IDX data (type 0x08), got "
                                      f"type {type_code:#x}")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise errors.DatasetUnavailableError(f"{path}: header says {dims} ({np.prod(dims)} values), "
                                      f"file holds {data.size}")
    return data.reshape(dims)


def _find_idx(data_dir: str, stem: str) -> str | None:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    return None


def load_idx_dir(data_dir: str) -> dict[str, np.ndarray]:
    """Loads the four MNIST-layout IDX files of ``data_dir``.

    Returns:
      dict with uint8 ``x_train`` [n, H, W], ``y_train`` [n], ``x_test``, ``y_test``.

    Raises:
      tfkd.errors.DatasetUnavailableError: a file is missing.
    """
    arrays = {}
    for key, stem in _IDX_FILES.items():
        path = _find_idx(data_dir, stem)
        if path is None:
            raise errors.DatasetUnavailableError(
                f"data_dir={data_dir!r}: expected IDX file {stem}[.gz] there, found "
                f"{sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else 'no such directory'}")
        arrays[key] = _read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(images) != len(labels) or labels.ndim != 1:
            raise errors.DatasetUnavailableError(
                f"data_dir={data_dir!r}: the {split} split has {len(images)} images but "
                f"{len(labels) if labels.ndim == 1 else list(labels.shape)} labels "
                f"({_IDX_FILES[f'x_{split}']} vs {_IDX_FILES[f'y_{split}']})")
    return arrays


def _from_uint8(name: str, arrays: dict[str, np.ndarray], num_classes: int, source: str) -> Dataset:
    def images(x):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        return (x.astype(np.float32) / 255.0)

    return Dataset(
        name=name,
        x_train=images(arrays["x_train"]),
        y_train=np.asarray(arrays["y_train"]).reshape(-1).astype(np.int64),
        x_test=images(arrays["x_test"]),
        y_test=np.asarray(arrays["y_test"]).reshape(-1).astype(np.int64),
        num_classes=num_classes,
        source=source,
    )


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads a registered dataset from the first source that has it (see module docstring).

    Args:
      name: a registered name (:func:`dataset_names`).
      data_dir: optional directory of IDX files (MNIST layout); tried first when given.

    Returns:
      A :class:`Dataset` with float32 images [n, H, W, C] in [0, 1] (the spec's image shape) and
      int64 labels.

    Raises:
      tfkd.errors.ConfigError: unknown ``name``.
      tfkd.errors.DatasetUnavailableError: ``data_dir`` was given but lacks the files or holds files that are
        not MNIST-layout IDX data, no source could be read (for example offline, with no local
        copy), or the images are not of the spec's shape.
    """
    spec = dataset_spec(name)
    local = spec.local_dir if spec.local_dir and os.path.isdir(spec.local_dir) else None
    if data_dir or local:
        dataset = _from_uint8(name, load_idx_dir(data_dir or local), spec.num_classes,
                              source=data_dir or local)
    else:
        source = getattr(spec.download, "source", f"{name} download")
        missing = f"no local copy (data_dir not given{', no ' + spec.local_dir if spec.local_dir else ''})"
        if spec.download is None:
            raise errors.DatasetUnavailableError(f"dataset={name!r}: {missing} and no download in "
                                                 f"its DatasetSpec; pass data_dir with the IDX files"
                                                 f"{spec.install_hint}")
        try:
            (x_train, y_train), (x_test, y_test) = spec.download()
        except Exception as e:  # Offline: urllib errors, wrapped by keras in various ways.
            raise errors.DatasetUnavailableError(
                f"dataset={name!r}: {missing} and {source} could not download it "
                f"({type(e).__name__}: {' '.join(str(e).split())[:200]}). Run on a machine that is "
                f"online, pass data_dir with the IDX files{spec.install_hint}.") from e
        arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        dataset = _from_uint8(name, arrays, spec.num_classes, source=source)
    if dataset.image_shape != spec.image_shape or dataset.x_test.shape[1:] != spec.image_shape:
        raise errors.DatasetUnavailableError(
            f"dataset={name!r} from {dataset.source}: expected images of shape "
            f"{list(spec.image_shape)} (its DatasetSpec), got {list(dataset.x_train.shape[1:])} "
            f"(train) and {list(dataset.x_test.shape[1:])} (test)")
    return dataset


def few_shot_indices(labels: np.ndarray, num_shots: int, num_classes: int, seed: int,
                     balanced: bool = True) -> np.ndarray:
    """Picks the indices of the N few-shot images (FS-BBT §4.1: 200 per class, N = 2000).

    The choice depends on the labels only through *which images share a class*, never on the label
    values: a seeded permutation of all images is walked and an image is kept while its class has
    fewer than N / num_classes kept. Renaming the classes by any bijection picks the same images,
    which is what the test that the method never sees true labels relies on.

    Args:
      labels: int [n] class ids of the pool.
      num_shots: N, the number of images to pick; with ``balanced`` a multiple of ``num_classes``.
      num_classes: number of classes.
      seed: the sampling seed.
      balanced: N / num_classes per class if True, else a uniform sample of the pool.

    Returns:
      int64 [N] indices into the pool, sorted.

    Raises:
      tfkd.errors.ConfigError: N not positive, not divisible by ``num_classes`` when balanced, or a
        class with too few images.
    """
    labels = np.asarray(labels).reshape(-1)
    if num_shots <= 0 or num_shots > labels.size:
        raise errors.ConfigError(f"num_shots={num_shots}: expected 1..{labels.size} (the pool size)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.size)
    if not balanced:
        return np.sort(order[:num_shots]).astype(np.int64)
    if num_shots % num_classes:
        raise errors.ConfigError(f"num_shots={num_shots}: expected a multiple of num_classes="
                                 f"{num_classes} for a balanced sample (or pass balanced=False)")
    per_class = num_shots // num_classes
    ordered = labels[order]
    # Rank of each image within its class, in permutation order (vectorised cumcount).
    sort = np.argsort(ordered, kind="stable")
    sorted_labels = ordered[sort]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty_like(sort)
    rank[sort] = np.arange(sort.size) - starts
    keep = order[rank < per_class]
    counts = np.bincount(labels[keep], minlength=num_classes)
    if keep.size != num_shots:
        raise errors.ConfigError(f"num_shots={num_shots}: the pool has too few images of some "
                                 f"class (picked per class: {counts.tolist()})")
    return np.sort(keep).astype(np.int64)


VALIDATION_SEED = 20221023
"""One fixed seed for the validation split: every run, seed and method of a dataset holds out the
same images, so choices made on it compare like with like."""


def validation_indices(num_train: int, num_validation: int,
                       seed: int = VALIDATION_SEED) -> np.ndarray:
    """Indices of the validation split: a seeded uniform sample of the training split.

    It depends only on the training-set size and the seed, never on labels (so a renaming of the
    classes holds out the same images).

    Args:
      num_train: size of the training split.
      num_validation: images to hold out, 0 <= num_validation < num_train.
      seed: the split's seed (default :data:`VALIDATION_SEED`, shared by all runs).

    Returns:
      int64 [num_validation] sorted indices into the training split.

    Raises:
      tfkd.errors.ConfigError: num_validation out of range.
    """
    if not 0 <= num_validation < num_train:
        raise errors.ConfigError(f"num_validation={num_validation}: expected 0 <= num_validation "
                                 f"< {num_train} (the training split's size)")
    order = np.random.default_rng(seed).permutation(num_train)
    return np.sort(order[:num_validation]).astype(np.int64)


def with_validation_split(dataset: Dataset, num_validation: int,
                          seed: int = VALIDATION_SEED) -> Dataset:
    """Holds ``num_validation`` training images out as a validation split.

    The returned dataset's ``x_train``/``y_train`` are the rest of the training split (the pool the
    teacher is trained on and the few shots are drawn from); ``x_val``/``y_val`` are the held-out
    images, used for choices (recipes, schedules, ablations) and training-time monitoring. The test
    split is untouched and is read once per reported figure.

    Args:
      dataset: a dataset without a validation split.
      num_validation: see :func:`validation_indices`; 0 returns the dataset unchanged.
      seed: the split's seed.

    Returns:
      the :class:`Dataset` with the validation split held out.

    Raises:
      tfkd.errors.ConfigError: num_validation out of range.
      ValueError: the dataset already has a validation split (the caller's bug).
    """
    if dataset.x_val is not None:
        raise ValueError(  # Programming error: the pipeline holds the split out once.
            f"dataset {dataset.name!r} already has a validation split")
    if num_validation == 0:
        return dataset
    held = validation_indices(len(dataset.x_train), num_validation, seed)
    keep = np.ones(len(dataset.x_train), bool)
    keep[held] = False
    return dataclasses.replace(dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep],
                               x_val=dataset.x_train[held], y_val=dataset.y_train[held])
