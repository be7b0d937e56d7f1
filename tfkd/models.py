"""Teacher and student architectures, built by name.

Every model maps float32 images [batch, H, W, C] in [0, 1] to float32 *logits* [batch, num_classes];
the softmax belongs to the exported signature (see :mod:`tfkd.export`) and to the losses, so that a
temperature can be applied to logits during distillation.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers


def _lenet(name: str, conv_filters: tuple[int, int], dense_units: tuple[int, int],
           input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape, name="images")
    # conv1 pads ("same"), as LeNet-5 on 28x28 inputs padded to 32x32: 5x5x16 features reach fc1.
    x = layers.Conv2D(conv_filters[0], 5, padding="same", activation="relu", name="conv1")(inputs)
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


def lenet5_half(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10) -> keras.Model:
    """LeNet-5-half, the FS-BBT student: conv 3 and 8 filters of 5x5, dense 120 and 84.

    Same contract as :func:`lenet5`.
    """
    return _lenet("lenet5_half", (3, 8), (120, 84), input_shape, num_classes)


MODELS: dict[str, Callable[..., keras.Model]] = {
    "lenet5": lenet5,
    "lenet5_half": lenet5_half,
}

# The paper's teacher -> student pairs by dataset (FS-BBT Table 1).
DEFAULT_PAIRS = {
    "mnist": ("lenet5", "lenet5_half"),
    "fashion_mnist": ("lenet5", "lenet5_half"),
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Builds a model by name.

    Args:
      name: one of ``MODELS``.
      input_shape: (H, W, C) of one image.
      num_classes: number of classes (width of the logits).

    Raises:
      ValueError: unknown name, or an input too small for the architecture.
    """
    if name not in MODELS:
        raise ValueError(f"model={name!r}: expected one of {sorted(MODELS)}")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape={input_shape}: expected (H, W, C)")
    if name.startswith("lenet") and min(input_shape[:2]) < 12:
        raise ValueError(f"input_shape={input_shape}: LeNet-5 needs H, W >= 12")
    return MODELS[name](tuple(int(d) for d in input_shape), int(num_classes))


def count_parameters(model: keras.Model) -> int:
    """Number of scalar weights (trainable and not) of a built Keras model."""
    return int(sum(int(w.numpy().size) for w in model.weights))
