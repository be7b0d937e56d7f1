"""Adding a method is one file: this one. It declares its own settings (a config dataclass), its
own loss (a ``keras.losses.Loss``), its own report fields and its own persisted artifact, and runs
end to end through the library (``tfkd.distill``) and the command (``--plugins``,
``--method_settings``) without a line of ``tfkd/`` or ``launch/`` knowing it. Its settings are found
in ``flags.json``, its fields in ``report.json``, and its artifact, damaged, is set aside and rebuilt
on reuse without a query paid twice.

The launcher imports this file as a plugin (``--plugins=test_one_file_method:register``): importing
it registers nothing by itself, so the test process's registry stays as other tests expect."""

import dataclasses
import functools
import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfkd
from tfkd import fs
from tfkd import methods
from tfkd import workdir as workdir_lib

from conftest import REPO

NAME = "test_one_file_noise"


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """The method's own settings.

    Attributes:
      num_noise: uniform-noise images labelled by the teacher (>= 1).
      low: the noise's lower bound, pixels in [low, 1) (0 <= low < 1).
      scale: the factor of the method's loss (> 0).
    """

    num_noise: int = 300
    low: float = 0.0
    scale: float = 2.0

    def validate(self) -> None:
        if self.num_noise < 1:
            raise ValueError(f"method_config.num_noise={self.num_noise}: expected >= 1")
        if not 0 <= self.low < 1:
            raise ValueError(f"method_config.low={self.low}: expected in [0, 1)")


@dataclasses.dataclass
class NoiseReport:
    """The method's own report fields (``report.json``'s ``method_report``)."""

    noise_mean: float | None = None
    images_reused: bool | None = None


class ScaledSoftCE(keras.losses.Loss):
    """Cross-entropy to the teacher's soft labels times ``scale``: the method's own loss."""

    def __init__(self, scale: float = 1.0, reduction="sum_over_batch_size", name="scaled_soft_ce"):
        super().__init__(reduction=reduction, name=name)
        self.scale = scale

    def call(self, y_true, y_pred):
        return self.scale * keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=True)


def _check_noise_file(path: str) -> None:
    with fs.load_npz(path) as f:
        images = f["images"]
    if images.ndim != 4 or not (0 <= images.min() and images.max() <= 1):
        raise ValueError(f"not noise images in [0, 1]: shape {images.shape}")


class UniformNoise(methods.Method):
    """Uniform-noise images, persisted as the method's own artifact, with the teacher's soft labels."""

    name = NAME
    teacher_needs = "soft_labels"
    description = "uniform noise images with the teacher's soft labels (a test plug-in)"
    config_class = NoiseConfig
    report_class = NoiseReport

    def make_loss(self, config):
        return functools.partial(ScaledSoftCE, config.method_config.scale)

    def plan(self, ctx):
        return {"label_noise": ctx.teacher.share(ctx.config.method_config.num_noise)}

    def _images(self, ctx):
        own = ctx.config.method_config

        def build():
            rng = np.random.default_rng(ctx.seed)
            return rng.uniform(own.low, 1.0, (own.num_noise, *ctx.image_shape)).astype(np.float32)

        def load(path):
            _check_noise_file(path)
            with fs.load_npz(path) as f:
                return f["images"]

        images, reused = ctx.artifacts.reuse_or_build(
            "noise_images", ".npz", (own,), build, lambda x, p: fs.save_npz(p, images=x), load,
            "noise images")
        ctx.method_report.images_reused = reused
        return images

    def build(self, ctx):
        images = self._images(ctx)
        ctx.method_report.noise_mean = float(images.mean())
        with ctx.stage("label_noise"):
            targets = ctx.teacher.soft_labels(images, stage="label_noise")
        return methods.TransferSet.from_parts([("noise", images, targets)])


def register():
    """Registers the method and its artifact kind (what ``--plugins=...:register`` calls)."""
    methods.register(UniformNoise(), replace=True)
    if not any(p == "noise_images-*.npz" for p, *_ in workdir_lib.ARTIFACTS):
        workdir_lib.register_artifact("noise_images-*.npz", "noise images", _check_noise_file)


@pytest.fixture
def registered():
    register()
    yield NAME
    methods._REGISTRY.pop(NAME, None)  # Leave the registry as found.


def test_a_method_of_one_file_runs_through_the_library(registered, server, tmp_path):
    config = tfkd.DistillConfig(
        workdir=str(tmp_path), method=NAME, method_config={"num_noise": 200, "low": 0.5},
        num_shots=20, num_validation=0, teacher=tfkd.TeacherConfig(target=server.target),
        student=tfkd.StudentConfig(epochs=1, batch_size=32), eval_examples=200,
        evaluate_teacher=False, compress=(), verbose=0)
    assert config.resolved().method_config == NoiseConfig(num_noise=200, low=0.5)
    report = tfkd.distill(config)
    assert report.transfer_set_sources == {"noise": 200}
    assert report.method_settings == [{"num_noise": 200, "low": 0.5, "scale": 2.0}]
    assert report.method_report["method"] == NAME and report.method_report["images_reused"] is False
    assert 0.74 < report.method_report["noise_mean"] < 0.76  # U(0.5, 1): its settings reached it.
    assert report.student_loss == f"{NAME}:ScaledSoftCE"
    assert len(glob.glob(str(tmp_path / "noise_images-*.npz"))) == 1
    with pytest.raises(tfkd.ConfigError, match=r"method_config.low=1.5"):
        tfkd.distill(config, method_config={"low": 1.5})


def _launch(workdir, *args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "distill.py"), f"--workdir={workdir}",
         "--plugins=test_one_file_method:register", f"--method={NAME}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])})


def test_a_method_of_one_file_runs_through_the_command_and_its_artifact_is_checked(server,
                                                                                   tmp_path):
    args = [f"--teacher={server.target}", '--method_settings={"num_noise": 150}',
            "--num_shots=20", "--num_validation=0", "--student_epochs=1", "--batch_size=32",
            "--eval_examples=200", "--noevaluate_teacher", "--compress=", "--verbose=0"]
    first = _launch(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    flags = json.loads((tmp_path / "flags.json").read_text())
    assert flags["method_settings"] == '{"num_noise": 150}' and flags["method"] == NAME
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method_settings"] == [{"num_noise": 150, "low": 0.0, "scale": 2.0}]
    assert report["method_report"]["images_reused"] is False
    assert report["teacher_queries_sent_by_stage"] == {"label_noise": 150}

    # The method's artifact damaged and the transfer set gone: the rerun sets the artifact aside,
    # rebuilds the same images and finds every answer in the ledger.
    [noise] = glob.glob(str(tmp_path / "noise_images-*.npz"))
    with open(noise, "r+b") as f:
        f.truncate(os.path.getsize(noise) // 2)
    for path in glob.glob(str(tmp_path / "transfer_set-*.npz")):
        os.remove(path)
    again = _launch(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [d["what"] for d in report["damaged_artifacts"]] == ["noise images"]
    assert report["method_report"]["images_reused"] is False
    assert report["teacher_queries_sent"] == 0 and report["teacher_queries_total"] == 150
    assert glob.glob(str(tmp_path / "noise_images-*.npz.damaged-*"))
