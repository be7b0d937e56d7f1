import numpy as np
import pytest

from tfkd.student import models


def test_lenet_parameter_counts():
    # conv 6/16 (or 3/8) 5x5, dense 120, 84, 10 on 28x28x1, conv1 padded: the classic 61,706.
    assert models.count_parameters(models.build_model("lenet5", (28, 28, 1), 10)) == 61_706
    assert models.count_parameters(models.build_model("lenet5_half", (28, 28, 1), 10)) == 35_820


@pytest.mark.parametrize("shape,classes", [((28, 28, 1), 10), ((32, 32, 3), 100)])
def test_any_input_shape_and_classes(shape, classes):
    model = models.build_model("lenet5_half", shape, classes)
    out = model(np.zeros((2, *shape), np.float32))
    assert tuple(out.shape) == (2, classes)


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="model='vgg'"):
        models.build_model("vgg", (28, 28, 1), 10)
    with pytest.raises(ValueError, match="H, W >= 12"):
        models.build_model("lenet5", (11, 11, 1), 10)
