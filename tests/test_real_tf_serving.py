"""The client against the real tensorflow_model_server, when it is on PATH (skipped otherwise;
see the ``real_tf_serving`` fixture in conftest.py)."""

import grpc
import numpy as np
import pytest

from tfkd import teacher


def test_client_against_real_tf_serving(real_tf_serving, server, fashion):
    images = fashion.x_test[:2000]  # Over 4 MB: split into requests.
    with teacher.connect(real_tf_serving, "teacher") as real, \
            teacher.connect(server.target, "teacher") as ours:
        assert real.signature == ours.signature
        np.testing.assert_allclose(real.soft_labels(images), ours.soft_labels(images), atol=1e-5)


def test_unknown_model_not_found_on_real_tf_serving(real_tf_serving):
    with pytest.raises(teacher.TeacherError) as e:
        teacher.connect(real_tf_serving, "no_such_model")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
