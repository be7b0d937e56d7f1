"""A teacher SavedModel served by KServe's own Python ``ModelServer`` (PyPI ``kserve``), which
speaks the Open Inference Protocol over REST (``/v2/...``) and gRPC (``GRPCInferenceService``): a
real server tfkd did not write, for tests/test_oip_kserve.py.

    python kserve_teacher.py MODEL_DIR NAME HTTP_PORT GRPC_PORT

MODEL_DIR is a SavedModel version directory; its ``serving_default`` signature's inputs and outputs
are published as the model's metadata (FP32, INT64, ... with -1 for the batch), and each infer
request's inputs are fed to it. It is served twice: as NAME, whose answers hold typed values
(JSON ``data``; gRPC ``contents``), and as NAME_raw, whose gRPC answers hold raw bytes
(``raw_output_contents``). Runs until killed.
"""

import sys

import numpy as np
import tensorflow as tf
from kserve import InferOutput
from kserve import InferResponse
from kserve import Model
from kserve import ModelServer

DATATYPES = {tf.float32: "FP32", tf.float64: "FP64", tf.int64: "INT64", tf.int32: "INT32",
             tf.uint8: "UINT8"}


def _types(specs: dict) -> list:
    return [{"name": name, "datatype": DATATYPES[spec.dtype],
             "shape": [-1 if d is None else int(d) for d in spec.shape.as_list()]}
            for name, spec in sorted(specs.items())]


class SavedModelTeacher(Model):
    """A SavedModel's ``serving_default`` behind KServe's model API (a "small predictor")."""

    def __init__(self, name: str, model_dir: str, raw: bool = False):
        super().__init__(name)
        self.model_dir = model_dir
        self.raw = raw
        self.load()

    def load(self) -> bool:
        self.function = tf.saved_model.load(self.model_dir).signatures["serving_default"]
        self.inputs = self.function.structured_input_signature[1]
        self.outputs = self.function.structured_outputs
        self.ready = True
        return self.ready

    def get_input_types(self):
        return _types(self.inputs)

    def get_output_types(self):
        return _types(self.outputs)

    async def predict(self, payload, headers=None, response_headers=None):
        feed = {i.name: tf.constant(i.as_numpy(), dtype=self.inputs[i.name].dtype)
                for i in payload.inputs}
        answers = self.function(**feed)
        wanted = [o.name for o in (payload.request_outputs or ())] or sorted(answers)
        outputs = []
        for name in wanted:
            value = np.asarray(answers[name])
            output = InferOutput(name=name, shape=list(value.shape),
                                 datatype=DATATYPES[answers[name].dtype])
            output.set_data_from_numpy(value, binary_data=self.raw)
            outputs.append(output)
        return InferResponse(response_id=payload.id or "", model_name=self.name,
                             infer_outputs=outputs)


if __name__ == "__main__":
    model_dir, name, http_port, grpc_port = sys.argv[1:5]
    sys.argv = sys.argv[:1]  # KServe's ModelServer parses the command line too.
    ModelServer(http_port=int(http_port), grpc_port=int(grpc_port), workers=1,
                enable_grpc=True).start([SavedModelTeacher(name, model_dir),
                                         SavedModelTeacher(f"{name}_raw", model_dir, raw=True)])
