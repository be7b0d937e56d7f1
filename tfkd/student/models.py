"""Teacher and student architectures, built by name.

Every model maps float32 images [batch, H, W, C] in [0, 1] to float32 *logits* [batch, num_classes];
the softmax belongs to the exported signature (see :mod:`tfkd.export`) and to the losses, so that a
temperature can be applied to logits during distillation.
"""

from __future__ import annotations

import os
from typing import Callable

import keras
from keras import layers

from tfkd import errors


def _lenet(name: str, conv_filters: tuple[int, int], dense_units: tuple[int, int],
           input_shape: tuple[int, int, int], num_classes: int,
           conv1_padding: str = "same") -> keras.Model:
    inputs = keras.Input(shape=input_shape, name="images")
    # conv1 pads ("same"), as LeNet-5 on 28x28 inputs padded to 32x32: 5x5x16 features reach fc1.
    x = layers.Conv2D(conv_filters[0], 5, padding=conv1_padding, activation="relu",
                      name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(conv_filters[1], 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units[0], activation="relu", name="fc1")(x)
    x = layers.Dense(dense_units[1], activation="relu", name="fc2")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def lenet5(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10) -> keras.Model:
    """LeNet-5 (LeCun et al. 1998) as in the FS-BBT code: conv 6 and 16 filters of 5x5 (the first
    padded "same"), each with ReLU and 2x2 max-pool, then dense 120 and 84 (ReLU) and the logits.
    61,706 weights on 28x28x1 with 10 classes, the classic LeNet-5 count.

    Args:
      input_shape: (H, W, C); H and W at least 12 (pool, valid 5x5 conv, pool).
      num_classes: width of the logits.

    Returns:
      A functional `keras.Model`: float32 [b, H, W, C] in [0, 1] -> logits float32 [b, num_classes].
    """
    return _lenet("lenet5", (6, 16), (120, 84), input_shape, num_classes)


def lenet5_valid(input_shape: tuple[int, int, int] = (28, 28, 1),
                 num_classes: int = 10) -> keras.Model:
    """LeNet-5 with an unpadded ("valid") conv1: 4x4x16 features reach fc1, 44,426 weights on
    28x28x1. A teacher recipe compared on the validation split (RESULTS.md); same contract as
    :func:`lenet5`."""
    return _lenet("lenet5_valid", (6, 16), (120, 84), input_shape, num_classes, "valid")


def lenet5_half(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10) -> keras.Model:
    """LeNet-5-half, the FS-BBT student: conv 3 and 8 filters of 5x5, dense 120 and 84.

    Same contract as :func:`lenet5`.
    """
    return _lenet("lenet5_half", (3, 8), (120, 84), input_shape, num_classes)


def _alexnet(name: str, scale: float, input_shape, num_classes: int) -> keras.Model:
    def f(n):
        return max(1, int(n * scale))

    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for i, (filters, kernel, pool) in enumerate(
            [(48, 5, True), (128, 5, True), (192, 3, False), (192, 3, False), (128, 3, True)], 1):
        x = layers.Conv2D(f(filters), kernel, padding="same", activation="relu", name=f"conv{i}")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{i}")(x)
            x = layers.BatchNormalization(name=f"bn{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate((512, 256), 1):
        x = layers.Dense(f(units), activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(0.5, name=f"dropout{i}")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def alexnet(input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
    """AlexNet for 32x32 images as in the ZSKD and FS-BBT code (the CIFAR-10 teacher): conv 48 (5x5),
    128 (5x5), 192, 192, 128 (3x3), 3x3/2 max-pool and batch norm after conv 1, 2 and 5, dense 512
    and 256 with dropout 0.5. float32 [b, H, W, C] in [0, 1] -> logits [b, num_classes]."""
    return _alexnet("alexnet", 1.0, input_shape, num_classes)


def alexnet_half(input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
    """AlexNet-half, the CIFAR-10 student: every conv and dense width of :func:`alexnet` halved."""
    return _alexnet("alexnet_half", 0.5, input_shape, num_classes)


def _resnet_cifar(name: str, depth: int, input_shape, num_classes: int) -> keras.Model:
    if (depth - 2) % 6:
        raise ValueError(  # Programming error: MODELS names only depths 6n + 2.
            f"depth={depth}: a CIFAR ResNet has depth 6n + 2 (20, 32, 56, ...)")
    blocks = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape, name="images")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization(name="stem_bn")(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            prefix = f"s{stage}b{block}"
            y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                              name=f"{prefix}_conv1")(x)
            y = layers.Activation("relu")(layers.BatchNormalization(name=f"{prefix}_bn1")(y))
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(y)
            y = layers.BatchNormalization(name=f"{prefix}_bn2")(y)
            if strides != 1 or x.shape[-1] != filters:
                x = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                  name=f"{prefix}_shortcut")(x)
                x = layers.BatchNormalization(name=f"{prefix}_shortcut_bn")(x)
            x = layers.Activation("relu")(layers.Add(name=f"{prefix}_add")([x, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def resnet32(input_shape=(32, 32, 3), num_classes: int = 100) -> keras.Model:
    """ResNet-32 for CIFAR (He et al. 2016, §4.2: 3 stages of 5 basic blocks, 16/32/64 filters), the
    CIFAR-100 teacher of FS-BBT. float32 [b, H, W, C] in [0, 1] -> logits [b, num_classes]."""
    return _resnet_cifar("resnet32", 32, input_shape, num_classes)


def resnet20(input_shape=(32, 32, 3), num_classes: int = 100) -> keras.Model:
    """ResNet-20 for CIFAR (3 stages of 3 basic blocks), the CIFAR-100 student of FS-BBT."""
    return _resnet_cifar("resnet20", 20, input_shape, num_classes)


def _application(name: str, constructor: str, input_scale: float = 1.0, **options):
    """A ``keras.applications`` family built from scratch (``weights=None``) for any input size."""

    def build(input_shape, num_classes: int) -> keras.Model:
        inputs = keras.Input(input_shape, name="images")
        x = layers.Rescaling(input_scale)(inputs) if input_scale != 1.0 else inputs
        backbone = getattr(keras.applications, constructor)(
            input_shape=tuple(input_shape), include_top=False, weights=None, pooling="avg",
            **options)
        logits = layers.Dense(num_classes, name="logits")(backbone(x))
        return keras.Model(inputs, logits, name=name)

    build.__doc__ = (f"``keras.applications.{constructor}`` (``weights=None``, ``include_top=False``, "
                     "average pooling) with a new Dense logits layer; inputs in [0, 1]"
                     + (f" scaled by {input_scale:g} for its built-in preprocessing"
                        if input_scale != 1.0 else "") + ". Needs H, W >= 32.")
    return build


APPLICATIONS: dict[str, Callable[..., keras.Model]] = {
    "mobilenet_v2": _application("mobilenet_v2", "MobileNetV2"),
    "mobilenet_v3_small": _application("mobilenet_v3_small", "MobileNetV3Small",
                                       include_preprocessing=False),
    "mobilenet_v3_large": _application("mobilenet_v3_large", "MobileNetV3Large",
                                       include_preprocessing=False),
    # EfficientNet rescales by 1/255 and normalises inside the model: it is given 0..255.
    "efficientnet_b0": _application("efficientnet_b0", "EfficientNetB0", input_scale=255.0),
    "efficientnetv2_b0": _application("efficientnetv2_b0", "EfficientNetV2B0", input_scale=255.0,
                                      include_preprocessing=True),
}
"""Students for real teachers: Keras' own mobile families, built from scratch (no pretrained
weights: the student learns from the teacher alone), sized by the teacher's input."""

USER_MODEL_SUFFIX = ".keras"

MODELS: dict[str, Callable[..., keras.Model]] = {
    "lenet5": lenet5,
    "lenet5_half": lenet5_half,
    "lenet5_valid": lenet5_valid,
    "alexnet": alexnet,
    "alexnet_half": alexnet_half,
    "resnet32": resnet32,
    "resnet20": resnet20,
    **APPLICATIONS,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Builds a model by name, or loads a user's model from a ``.keras`` file.

    Args:
      name: one of ``MODELS``, or the path of a ``.keras`` file (any file system ``tf.io.gfile``
        reads) holding the user's own model: float32 [b, H, W, C] in [0, 1] -> logits [b, K] (no
        softmax), loaded uncompiled with the weights it holds.
      input_shape: (H, W, C) of one image.
      num_classes: number of classes (width of the logits).

    Raises:
      tfkd.errors.ConfigError: unknown name, an input too small for the architecture, or a user's
        model that does not load or whose input or output shape does not fit.
    """
    if len(input_shape) != 3:
        raise errors.ConfigError(f"input_shape={input_shape}: expected (H, W, C)")
    shape = tuple(int(d) for d in input_shape)
    if is_user_model(name):
        return load_user_model(name, shape, int(num_classes))
    if name not in MODELS:
        raise errors.ConfigError(f"model={name!r}: expected one of {sorted(MODELS)} or a path "
                                 f"ending in {USER_MODEL_SUFFIX}")
    if name.startswith("lenet") and min(shape[:2]) < 12:
        raise errors.ConfigError(f"input_shape={input_shape}: LeNet-5 needs H, W >= 12")
    if name in APPLICATIONS and min(shape[:2]) < 32:
        raise errors.ConfigError(f"input_shape={input_shape}: {name} needs H, W >= 32")
    return MODELS[name](shape, int(num_classes))


def is_user_model(name: str) -> bool:
    """Whether a model name is a path to the user's own ``.keras`` model."""
    return name.endswith(USER_MODEL_SUFFIX)


def load_user_model(path: str, input_shape: tuple, num_classes: int) -> keras.Model:
    """A user's own Keras model (``StudentConfig.architecture`` = ``PATH.keras``), loaded
    uncompiled.

    Raises:
      tfkd.errors.ConfigError: no such file, a file Keras cannot load, or its input is not
        [None, *input_shape] or its output not [None, num_classes].
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise errors.ConfigError(f"student.architecture={path!r}: no such file")
    local = path
    if "://" in path:  # keras.saving reads local files: copy a remote one next to the caller.
        import tempfile

        local = os.path.join(tempfile.mkdtemp(prefix="tfkd-student-"), os.path.basename(path))
        tf.io.gfile.copy(path, local)
    try:
        model = keras.saving.load_model(local, compile=False)
    except Exception as e:  # noqa: BLE001 - a zip error, a missing custom object, a bad config.
        reason = " ".join(str(e).split())[:300]
        raise errors.ConfigError(f"student.architecture={path!r}: not a Keras model file Keras "
                                 f"loads ({type(e).__name__}: {reason})") from None
    got_in = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    got_out = tuple(model.outputs[0].shape[1:]) if model.outputs else None
    if got_in != tuple(input_shape) or got_out != (num_classes,):
        raise errors.ConfigError(f"student.architecture={path!r}: expected a model of input "
                                 f"[None, {', '.join(map(str, input_shape))}] and logits [None, "
                                 f"{num_classes}]; it has input {got_in} and output {got_out}")
    return model


def count_parameters(model: keras.Model) -> int:
    """Number of scalar weights (trainable and not) of a built Keras model."""
    return int(sum(int(w.numpy().size) for w in model.weights))
