"""Request tensors in, outputs out: TF Serving's Predict validation, in its own words.

:func:`tensor_from_proto` checks a request's TensorProto against its declared size before anything
is allocated; :func:`run_signature` checks inputs against the SignatureDef (aliases, dtypes, shapes,
an empty batch) and runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import numpy as np
import tensorflow as tf

from tfkd.errors import ServingError

if TYPE_CHECKING:
    from tfkd.serving.registry import Servable


# TensorProto's typed value field per dtype, and how many entries one element takes there.
_VALUE_FIELDS = {
    tf.float32: ("float_val", 1), tf.float64: ("double_val", 1), tf.int32: ("int_val", 1),
    tf.int16: ("int_val", 1), tf.int8: ("int_val", 1), tf.uint8: ("int_val", 1),
    tf.uint16: ("int_val", 1), tf.int64: ("int64_val", 1), tf.bool: ("bool_val", 1),
    tf.string: ("string_val", 1), tf.float16: ("half_val", 1), tf.bfloat16: ("half_val", 1),
    tf.uint32: ("uint32_val", 1), tf.uint64: ("uint64_val", 1),
    tf.complex64: ("scomplex_val", 2), tf.complex128: ("dcomplex_val", 2),
}
DEFAULT_MAX_TENSOR_BYTES = 256 * 1024 * 1024


# Over the complexity limit (C901) as a flat list of guards, one per way a request can lie about its size.
def tensor_from_proto(alias: str, proto, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> np.ndarray:  # noqa: C901
    """Decodes a request's TensorProto after checking its declared size, before allocating it.

    A tensor's content (``tensor_content`` bytes, or the typed ``*_val`` field) must hold exactly the
    number of values its shape declares, and the decoded tensor must fit in ``max_bytes``: a request
    of a few bytes that declares a huge shape is refused, not allocated.

    Args:
      alias: the input's name, for messages.
      proto: a ``tensorflow.TensorProto``.
      max_bytes: the largest decoded tensor accepted, in bytes.

    Returns:
      the numpy array (``tf.make_ndarray``).

    Raises:
      ServingError: INVALID_ARGUMENT naming the alias, the declared shape and what was carried.
    """
    def refuse(why: str):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}: {why}")

    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        refuse(f"unknown dtype enum {proto.dtype}")
    if proto.tensor_shape.unknown_rank:
        refuse("the shape has unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        refuse(f"shape {dims} has a negative dimension")
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow.
    itemsize = 1 if dtype == tf.string else dtype.size
    if count * itemsize > max_bytes:
        refuse(f"shape {dims} declares {count * itemsize:,} bytes, over the server's limit of "
               f"{max_bytes:,} bytes per tensor")
    if proto.tensor_content:
        if dtype == tf.string:
            refuse("a string tensor cannot use tensor_content")
        carried = len(proto.tensor_content)
        if carried != count * itemsize:
            refuse(f"shape {dims} declares {count} values ({count * itemsize} bytes) but "
                   f"tensor_content holds {carried} bytes")
    else:
        field, per_value = _VALUE_FIELDS.get(dtype, (None, 1))
        if field is None:
            refuse(f"dtype {dtype.name} is not supported")
        carried = len(getattr(proto, field))
        if carried != count * per_value:
            refuse(f"shape {dims} declares {count} values but {field} holds "
                   f"{carried // per_value}")
    try:
        if proto.tensor_content and dtype.is_numpy_compatible:
            # The bytes as an array without a copy (tf.make_ndarray copies them; read-only here,
            # and the model call converts it to a tensor anyway).
            return np.frombuffer(proto.tensor_content, dtype.as_numpy_dtype).reshape(dims)
        return tf.make_ndarray(proto)
    except Exception as e:  # A malformed proto that passed the size checks.
        refuse(f"{type(e).__name__}: {str(e)[:200]}")


def _check_input(alias: str, value: np.ndarray, info) -> None:
    expected = tf.dtypes.as_dtype(info.dtype)
    if value.dtype != expected.as_numpy_dtype:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expects arg[0] ({alias}) to be {expected.name} but "
                           f"{tf.dtypes.as_dtype(value.dtype).name} is provided")
    if not info.tensor_shape.unknown_rank:
        dims = [d.size for d in info.tensor_shape.dim]
        if len(dims) != value.ndim or any(d >= 0 and d != s for d, s in zip(dims, value.shape)):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input tensor {alias}: shape {list(value.shape)} does not match the "
                               f"signature's {dims} (-1 is any size)")


def call_signature(servable: Servable, signature_name: str, feeds: dict) -> dict[str, np.ndarray]:
    """One model call: ``feeds`` (alias -> numpy array, validated) through the signature; every
    output as alias -> numpy array. Raises what the SavedModel's function raises."""
    outputs = servable.loaded.signatures[signature_name](**feeds)
    return {alias: value.numpy() for alias, value in outputs.items()}


def run_signature(servable: Servable, signature_name: str, inputs: dict,
                  output_filter: list[str], batcher=None) -> dict[str, np.ndarray]:
    """Runs one signature of a servable, validating as TF Serving's Predict does.

    Args:
      inputs: alias -> numpy array (or, for the REST API, a nested list converted here).
      output_filter: aliases to return; empty: all outputs.
      batcher: a :class:`tfkd.serving.batching.BatchScheduler` to merge this call with concurrent
        ones (requests whose inputs have a batch axis); None: the model is called at once.

    Returns:
      alias -> numpy array.

    Raises:
      ServingError: FAILED_PRECONDITION for an unknown signature, INVALID_ARGUMENT for bad inputs.
    """
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    if len(inputs) != len(signature.inputs):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(inputs)}!={len(signature.inputs)} "
            f"len([{','.join(sorted(inputs))}]) != len([{','.join(sorted(signature.inputs))}])")
    feeds = {}
    for alias, value in inputs.items():
        if alias not in signature.inputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                f"the set {{{', '.join(sorted(signature.inputs))}}}.")
        info = signature.inputs[alias]
        if not isinstance(value, np.ndarray):  # REST: JSON lists, typed by the signature.
            try:
                value = np.asarray(value, dtype=tf.dtypes.as_dtype(info.dtype).as_numpy_dtype)
            except (TypeError, ValueError) as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"tensor parsing error: {alias} ({e})") from None
        _check_input(alias, value, info)
        if value.ndim and value.shape[0] == 0:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input tensor {alias}: the batch is empty (shape "
                               f"{list(value.shape)}); send at least one example")
        feeds[alias] = value
    aliases = list(output_filter) or list(signature.outputs)
    for alias in aliases:
        if alias not in signature.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{', '.join(sorted(signature.outputs))}}}.")
    if len(set(aliases)) != len(aliases):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"duplicate output tensor alias in output_filter: {aliases}")
    outputs = _call(servable, signature_name, feeds, batcher)
    return {alias: outputs[alias] for alias in aliases}


def _call(servable: Servable, signature_name: str, feeds: dict, batcher) -> dict[str, np.ndarray]:
    """The model call of :func:`run_signature`, batched with concurrent ones when ``batcher`` is
    given and every input has a batch axis. Raises ServingError (INVALID_ARGUMENT) for a failing
    run."""
    try:
        if batcher is None or any(v.ndim == 0 for v in feeds.values()):
            return call_signature(servable, signature_name, feeds)
        layout = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items()))
        return batcher.run((servable.name, servable.version, signature_name, layout),
                           lambda **f: call_signature(servable, signature_name, f), feeds)
    except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e).split("\n")[0]) from None



def run_classify(servable: Servable, signature_name: str,
                 examples: list[bytes]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Runs a Classify API signature on serialized ``tf.train.Example`` records, validating as TF
    Serving's classifier does (``tensorflow_serving/servables/tensorflow/classifier.cc``).

    Args:
      examples: serialized Examples (context already merged in).

    Returns:
      (classes bytes [n, K] or None, scores float32 [n, K] or None): the signature's ``classes``
      and ``scores`` outputs (at least one of them).

    Raises:
      ServingError: FAILED_PRECONDITION for an unknown signature or one that is not a
        classification signature; INVALID_ARGUMENT for an empty input or a failing run.
    """
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    if signature.method_name != tf.saved_model.CLASSIFY_METHOD_NAME:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected classification signature method_name to be "
                           f"{tf.saved_model.CLASSIFY_METHOD_NAME}. Was: {signature.method_name}")
    inputs = signature.inputs.get(tf.saved_model.CLASSIFY_INPUTS)
    if len(signature.inputs) != 1 or inputs is None or inputs.dtype != tf.string.as_datatype_enum:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "Expected one input Tensor of type string named "
                           f"{tf.saved_model.CLASSIFY_INPUTS!r}")
    keys = [k for k in (tf.saved_model.CLASSIFY_OUTPUT_CLASSES,
                        tf.saved_model.CLASSIFY_OUTPUT_SCORES) if k in signature.outputs]
    if not keys:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "Expected classification signature outputs 'classes' and/or 'scores'")
    if not examples:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    try:
        outputs = servable.loaded.signatures[signature_name](
            **{tf.saved_model.CLASSIFY_INPUTS: tf.constant(examples, tf.string)})
    except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"classify: the examples could not be run ({op_error_cause(e)})") from None
    classes = outputs.get(tf.saved_model.CLASSIFY_OUTPUT_CLASSES)
    scores = outputs.get(tf.saved_model.CLASSIFY_OUTPUT_SCORES)
    return (None if classes is None else classes.numpy(),
            None if scores is None else scores.numpy().astype(np.float32))


def op_error_cause(error: Exception) -> str:
    """The line of a TensorFlow error that says what went wrong ("Unknown image file format..."),
    not its "Graph execution error:" header or the graph's stack."""
    lines = [line.strip() for line in str(error).splitlines()]
    causes = [line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at node", "File ", "[[", "{{", "Traceback"))
        and not line.endswith(":")]
    return (causes[-1] if causes else lines[0])[:300]


def serialized_examples(request_input) -> list[bytes]:
    """The serialized Examples of a ``tensorflow.serving.Input``: ``example_list``, or
    ``example_list_with_context`` with the context's features merged into each example (the
    example's own win)."""
    from tensorflow.core.example import example_pb2

    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        merged = []
        for example in listed.examples:
            full = example_pb2.Example()
            full.CopyFrom(listed.context)
            for key, feature in example.features.feature.items():
                full.features.feature[key].CopyFrom(feature)
            merged.append(full.SerializeToString())
        return merged
    return []
