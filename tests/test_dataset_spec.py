"""Issue 36 §5: everything tfkd knows about a dataset is one :class:`tfkd.data.DatasetSpec`, and
adding a dataset is one registration. The dataset registered here is real Fashion-MNIST, cropped
to its central 24x24 pixels and averaged over 2x2 blocks: 12x12 grey images."""

import numpy as np
import pytest
import tensorflow as tf
from test_data import write_idx

import tfkd
from tfkd import data
from tfkd import errors
from tfkd.methods.zskd.config import ZSKDConfig

NAME = "fashion_mnist_12"


def _small(x: np.ndarray) -> np.ndarray:
    """float32 [n, 28, 28, 1] in [0, 1] -> uint8 [n, 12, 12]: the central 24x24, 2x2 means."""
    crop = x[:, 2:26, 2:26, 0].reshape(len(x), 12, 2, 12, 2).mean(axis=(2, 4))
    return np.round(crop * 255).astype(np.uint8)


@pytest.fixture
def small_fashion(fashion):
    """The 12x12 dataset, registered for the test and removed after it."""
    calls = []

    def download():
        calls.append(1)
        return ((_small(fashion.x_train[:6000]), fashion.y_train[:6000]),
                (_small(fashion.x_test[:1000]), fashion.y_test[:1000]))

    spec = data.register_dataset(data.DatasetSpec(
        NAME, (12, 12, 1), 10, teacher="lenet5_half", student="lenet5",
        class_names=data.dataset_spec("fashion_mnist").class_names, num_shots=300,
        num_validation=1000, zskd_impressions=1200, cvae_architecture="conv", download=download))
    yield spec, calls
    data.unregister_dataset(NAME)


def test_a_registered_dataset_gives_every_default_the_run_resolves(small_fashion):
    # Before the fix: DistillConfig(dataset=NAME).resolved() raised ConfigError ("expected one of
    # ('fashion_mnist', 'mnist', 'cifar10', 'cifar100')"): the names, the architectures, N, the
    # CVAE and the ZSKD count were five tables keyed by the four names.
    spec, _ = small_fashion
    assert NAME in data.SUPPORTED_DATASETS and NAME in data.dataset_names()
    run = tfkd.DistillConfig(workdir="w", dataset=NAME).resolved()
    assert (run.num_shots, run.num_validation) == (300, 1000)
    assert (run.teacher_train.architecture, run.student.architecture) == ("lenet5_half", "lenet5")
    # "conv" is the spec's: the shape rule alone would give "mlp" for 12x12 grey images.
    assert data.cvae_architecture_for(spec.image_shape) == "mlp"
    assert run.method_config.cvae.architecture == "conv"
    assert run.method_config.active.assistant == "lenet5_half"
    zskd = tfkd.DistillConfig(workdir="w", dataset=NAME, method="zskd").resolved()
    assert zskd.method_config.zskd.count == 1200
    assert isinstance(zskd.method_config, ZSKDConfig)
    # What the user sets is kept.
    mine = tfkd.DistillConfig(workdir="w", dataset=NAME, num_shots=40, num_validation=0).resolved()
    assert (mine.num_shots, mine.num_validation) == (40, 0)


def test_registration_is_checked_and_undone(small_fashion):
    spec, _ = small_fashion
    with pytest.raises(errors.ConfigError, match=f"dataset '{NAME}' is already registered"):
        data.register_dataset(spec)
    for fields, named in [(dict(image_shape=(12, 12)), "dataset_spec.image_shape"),
                          (dict(num_classes=1), "dataset_spec.num_classes=1"),
                          (dict(class_names=("a", "b")), "dataset_spec.class_names"),
                          (dict(cvae_architecture="gan"), "dataset_spec.cvae_architecture='gan'")]:
        with pytest.raises(errors.ConfigError, match=named):
            data.DatasetSpec(**{**dict(name="other", image_shape=(12, 12, 1), num_classes=10,
                                       teacher="lenet5", student="lenet5_half"), **fields})
    assert data.DatasetSpec("other", (40, 40, 3), 2, "alexnet", "alexnet_half").class_names == ("0", "1")
    data.unregister_dataset(NAME)
    try:
        assert NAME not in data.SUPPORTED_DATASETS
        with pytest.raises(errors.ConfigError, match=f"dataset='{NAME}': expected one of"):
            tfkd.DistillConfig(workdir="w", dataset=NAME).resolved()
    finally:
        data.register_dataset(spec)


def test_the_spec_loads_its_images_at_its_shape_and_refuses_others(small_fashion, tmp_path, fashion):
    _, calls = small_fashion
    dataset = data.load_dataset(NAME)
    assert calls == [1] and dataset.source == f"{NAME} download"
    assert dataset.x_train.shape == (6000, 12, 12, 1) and dataset.x_test.shape == (1000, 12, 12, 1)
    assert dataset.class_names[0] == "T-shirt/top" and dataset.num_classes == 10
    np.testing.assert_array_equal(dataset.y_train, fashion.y_train[:6000])
    # Before the fix no shape was known: 28x28 IDX files were read as any dataset's images.
    x = np.round(fashion.x_train[:20, ..., 0] * 255).astype(np.uint8)
    write_idx(tmp_path, x, fashion.y_train[:20], x[:5], fashion.y_train[:5])
    expected = r"expected images of shape \[12, 12, 1\] \(its DatasetSpec\), got \[28, 28, 1\]"
    with pytest.raises(errors.DatasetUnavailableError, match=expected):
        data.load_dataset(NAME, str(tmp_path))


def test_a_tiny_run_on_the_registered_dataset(small_fashion, tmp_path):
    """The whole run on the new dataset with no other edit: the teacher tfkd trains and the student
    are the spec's architectures at 12x12, the CVAE the spec's convolutional one."""
    report = tfkd.distill(
        workdir=str(tmp_path / "run"), dataset=NAME, num_shots=50, num_validation=200,
        teacher_train={"epochs": 1}, mixup={"num_images": 100},
        cvae={"epochs": 1, "batch_size": 64, "num_images": 20},
        student={"epochs": 1, "batch_size": 32}, eval_examples=200, evaluate_teacher=False,
        compress=(), verbose=0)
    assert (report.teacher_architecture, report.student_architecture) == ("lenet5_half", "lenet5")
    cvae = report.method_report["cvae"]
    assert cvae["architecture"] == "conv" and cvae["working_shape"] == [12, 12, 1]
    assert report.transfer_set_sources == {"real": 50, "mixup": 100, "cvae": 20}
    assert 0.0 <= report.student_accuracy <= 1.0
    student = tf.saved_model.load(report.student_export_dir).signatures["serving_default"]
    assert student.structured_input_signature[1]["images"].shape.as_list() == [None, 12, 12, 1]


def test_a_registered_spec_cannot_change_behind_the_registry():
    """Specs (and their loaders) are frozen, hashable values: nothing changes a registered
    dataset's shape, classes or source in place. Mutation sample: KerasDownload not frozen made
    every built-in spec unhashable, and no test noticed."""
    import dataclasses

    for name in data.dataset_names():
        spec = data.dataset_spec(name)
        assert hash(spec) == hash(dataclasses.replace(spec))
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.num_classes = 3
