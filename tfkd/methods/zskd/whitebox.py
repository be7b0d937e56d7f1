"""The white-box teacher: its SavedModel loaded in-process, for ``zskd`` (the teacher's weights and
gradients; no query)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from tfkd import errors
from tfkd import fs


class SavedModelTeacher:
    """A teacher's SavedModel loaded in-process, for the methods that need its weights and
    gradients (white-box ZSKD): the same version directory a TF Serving base path holds.

    Args:
      version_dir: a SavedModel directory (``saved_model.pb``).
      signature: the signature to call (``serving_default``).
      input_key: its image input, float32 [b, H, W, C] in [0, 1].

    Logits: the signature's ``logits`` output if it has one, else the log of its ``probabilities``
    (log-probabilities differ from the logits by a per-row constant, so softmax(· / T) is the same).

    Raises:
      tfkd.errors.ConfigError: the directory does not load as a SavedModel, or has no such
        signature or input, or neither output (the message names what is there).
    """

    def __init__(self, version_dir: str, signature: str = "serving_default",
                 input_key: str = "images"):
        self.version_dir = version_dir
        self._loaded = fs.load_saved_model(version_dir, "teacher_saved_model")
        if signature not in self._loaded.signatures:
            raise errors.ConfigError(f"teacher_saved_model={version_dir!r}: no signature "
                                     f"{signature!r} (has {sorted(self._loaded.signatures)})")
        self._fn = self._loaded.signatures[signature]
        inputs = self._fn.structured_input_signature[1]
        if input_key not in inputs:
            raise errors.ConfigError(f"teacher_saved_model={version_dir!r}: signature "
                                     f"{signature!r} has no input {input_key!r} (has "
                                     f"{sorted(inputs)})")
        self.input_key = input_key
        self.image_shape = tuple(inputs[input_key].shape[1:])
        outputs = self._fn.structured_outputs
        self.output_key = next((k for k in ("logits", "probabilities") if k in outputs), None)
        if self.output_key is None:
            raise errors.ConfigError(f"teacher_saved_model={version_dir!r}: signature "
                                     f"{signature!r} has neither a 'logits' nor a 'probabilities' "
                                     f"output (has {sorted(outputs)})")
        self.num_classes = int(outputs[self.output_key].shape[-1])

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [b, K] logits (or log-probabilities) of float32 [b, H, W, C] images in [0, 1];
        differentiable with respect to the images."""
        out = self._fn(**{self.input_key: images})[self.output_key]
        if self.output_key == "logits":
            return out
        return tf.math.log(tf.maximum(out, 1e-30))

    def final_layer_weights(self, variable: str | None = None) -> np.ndarray:
        """The final layer's weights float32 [F, K]: the one 2-D variable of shape [*, K] the
        signature uses, or the one named ``variable`` (``--zskd_final_layer``).

        Raises:
          tfkd.errors.ConfigError: no such variable, none of shape [*, K], or several (the message
            lists them and names the setting).
        """
        found = {v.name.split(":")[0]: v for v in self._fn.variables}
        if variable is not None:
            if variable.split(":")[0] not in found:
                raise errors.ConfigError(f"zskd.final_layer={variable!r}: not a variable of "
                                         f"{self.version_dir} (has {sorted(found)})")
            weights = found[variable.split(":")[0]].numpy()
        else:
            candidates = [n for n, v in found.items()
                          if len(v.shape) == 2 and v.shape[-1] == self.num_classes]
            if len(candidates) != 1:
                raise errors.ConfigError(
                    f"{self.version_dir}: {len(candidates)} variables of shape [features, "
                    f"{self.num_classes}] ({candidates}); name the final layer's with "
                    f"zskd.final_layer")
            weights = found[candidates[0]].numpy()
        if weights.ndim != 2 or weights.shape[-1] != self.num_classes:
            raise errors.ConfigError(f"zskd.final_layer={variable!r}: shape {weights.shape}, "
                                     f"expected [features, {self.num_classes}]")
        return weights.astype(np.float32)


def label_in_process(logits_fn: Callable, images: np.ndarray, temperature: float,
                     batch_size: int = 1024) -> np.ndarray:
    """The teacher's softmax at T, float32 [n, K], on float32 [n, H, W, C] images in [0, 1], from
    ``logits_fn`` (a white-box teacher in-process: no query)."""
    parts = [tf.nn.softmax(logits_fn(tf.constant(images[i:i + batch_size])) / temperature).numpy()
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def load_for(version_dir: str, image_shape: tuple) -> SavedModelTeacher:
    """The teacher's SavedModel in-process, checked against the data's image shape (H, W, C).

    Raises:
      tfkd.errors.ConfigError: as :class:`SavedModelTeacher`, or its input shape is not
        ``image_shape`` (both named)."""
    teacher = SavedModelTeacher(version_dir)
    if teacher.image_shape != tuple(image_shape):
        raise errors.ConfigError(f"teacher_saved_model={version_dir!r}: input "
                                 f"{list(teacher.image_shape)}, expected "
                                 f"{list(image_shape)} (the data's)")
    return teacher
