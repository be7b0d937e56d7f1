"""One function per method, composing the modules from a config dataclass.

:func:`run_fsbbt` is FS-BBT (Nguyen et al., ECCV 2022, Algorithm 1): N unlabeled images -> MixUp
images + CVAE images -> all labelled by the black-box teacher over gRPC -> student trained on the
soft labels -> exported student, measured by serving it and querying it over gRPC.

Work dir layout::

    .lock                        held by the run using the work dir (a second run is refused)
    teacher/<version>/           the teacher SavedModel, when tfkd trains it (teacher="" only)
    teacher/recipe.json          the settings that trained it (a rerun with others is refused)
    ledger/*.npz                 every teacher answer, persisted as it arrives (never asked twice)
    ledger/queries_sent.log      every image sent to the teacher, charged before it is sent
    few_shot_indices.npy         which images of the pool (training split less the validation
                                 split) are the N shots (their labels are never read)
    cvae-<fp>.weights.h5         the trained CVAE
    labelled_set-<fp>.npz        real + MixUp + CVAE images with teacher soft labels (persisted once)
    grid_{real,mixup,cvae}.png   images per teacher class
    student_backup-<fp>/         Keras BackupAndRestore state: a rerun resumes training
    tensorboard/                 student losses, learning rate, validation accuracy; image grids

``<fp>`` is a fingerprint of everything the artifact depends on (configs, seed, teacher identity),
so a rerun with the same settings reuses it and a rerun with other settings does not.
    export/student/<version>/    the student SavedModel, TF Serving layout (student_<variant>/ too)
    serving/                     models.config (stable/canary labels), batching, monitoring configs
    report.json                  figures of the run
    *.damaged-<time>             artifacts found damaged and set aside (see :mod:`tfkd.workdir`)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import data as data_lib
from tfkd import distill
from tfkd import export
from tfkd import models
from tfkd import serving
from tfkd import synthesis
from tfkd import teacher as teacher_lib
from tfkd import viz
from tfkd import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig:
    """Training of a teacher on the full training set (what its owner would have done).

    Adam with cosine decay of the learning rate to 0 (a constant rate leaves LeNet-5 below 89% on
    Fashion-MNIST after 20 epochs; see BUILD_NOTES.md).
    """

    architecture: str = "lenet5"
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"


METHODS = ("student_alone", "standard_kd", "mixup", "cvae", "fsbbt")


@dataclasses.dataclass(frozen=True)
class FSBBTConfig:
    """Everything one FS-BBT run needs; defaults are the paper's Fashion-MNIST setting.

    Attributes:
      workdir: where everything of the run is written (see module docstring).
      method: one of ``METHODS`` (FS-BBT Table 2's rows): ``student_alone`` trains on the N images
        with their TRUE labels (the lower baseline; the only method that reads labels);
        ``standard_kd`` on the N images with teacher soft labels; ``mixup`` on N + MixUp images;
        ``cvae`` on N + CVAE images; ``fsbbt`` on N + MixUp + CVAE. ``mixup`` and ``cvae`` get the
        whole synthetic budget (num_images of MixUp plus CVAE), so every synthetic method costs the
        same number of teacher queries.
      dataset, data_dir: see :func:`tfkd.data.load_dataset`.
      seed: one seed for sampling, synthesis and training.
      num_shots: N, the unlabeled real images (balanced over classes).
      teacher: how to reach and read the teacher (:class:`tfkd.teacher.TeacherConfig`); an empty
        ``target`` trains a teacher into the work dir if none is there, serves it on a free loopback
        port, and stops it at the end. ``teacher.query_budget`` caps the images sent.
      teacher_train: used only when tfkd trains the teacher.
      mixup, cvae, student: the stages' configs.
      num_validation: training images held out as the validation split (the same images for
        every seed and method; see :func:`tfkd.data.with_validation_split`): neither the teacher
        tfkd trains nor the few shots come from them. Choices and training-time monitoring use
        them; the test split is read once, for the reported accuracies. 0: no validation split.
      eval_examples: test images used for the accuracies (0: the full test set).
      evaluate_test: measure the test accuracies (student, and teacher with ``evaluate_teacher``).
        False for runs that only make a choice on the validation split: the test split is then not
        read at all.
      evaluate_teacher: also measure the teacher's test accuracy over gRPC (costs test-set queries,
        counted in the work dir's query account and budget like every other query).
      compress: compressed student variants to export and measure besides float32 (see
        :data:`tfkd.export.VARIANTS`), each in ``export/student_<variant>/<version>/``.
      verbose: Keras verbosity: 0 silent, 1 progress bars (also for labelling), 2 one line per epoch.
    """

    workdir: str
    method: str = "fsbbt"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    seed: int = 0
    num_shots: int = 2000
    num_validation: int = 5000
    teacher: teacher_lib.TeacherConfig = teacher_lib.TeacherConfig()
    teacher_train: TeacherTrainConfig = TeacherTrainConfig()
    mixup: synthesis.MixUpConfig = synthesis.MixUpConfig()
    cvae: synthesis.CVAEConfig = synthesis.CVAEConfig()
    student: distill.StudentConfig = distill.StudentConfig()
    eval_examples: int = 0
    evaluate_test: bool = True
    evaluate_teacher: bool = True
    compress: tuple = ("float16", "int8")
    verbose: int = 1


def fingerprint(*parts) -> str:
    """A 10-hex-digit digest of JSON-able parts (dataclasses are turned into dicts)."""
    def plain(x):
        return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x
    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


class _Stages:
    """Seconds per stage, for the report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        logging.info("Stage %s: start", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
        logging.info("Stage %s: done in %.1f s", name, self.seconds[name])


def train_and_export_teacher(dataset: data_lib.Dataset, config: TeacherTrainConfig,
                             export_base: str, seed: int = 0, verbose: int = 1,
                             evaluate_test: bool = True) -> dict:
    """Trains a teacher on the labelled training split and exports it for TF Serving.

    This is the teacher owner's job, not part of distillation (which never sees these labels). With
    a validation split (``dataset.x_val``) the teacher never trains on it and its accuracy there is
    what the owner chooses recipes by.

    Args:
      evaluate_test: also measure the test accuracy (False for tries that only choose).

    Returns:
      dict with ``export_dir``, ``test_accuracy`` and ``validation_accuracy`` (in-process, fractions
      in [0, 1], or None when not measured), ``parameters``.
    """
    keras.utils.set_random_seed(seed)
    model = models.build_model(config.architecture, dataset.image_shape, dataset.num_classes)
    steps = config.epochs * -(-len(dataset.x_train) // config.batch_size)
    lr = distill.learning_rate(config.learning_rate, config.lr_schedule, steps)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.fit(dataset.x_train, dataset.y_train, batch_size=config.batch_size, epochs=config.epochs,
              verbose=verbose, shuffle=True)
    accuracy = validation = None
    if evaluate_test:
        accuracy = float(model.evaluate(dataset.x_test, dataset.y_test, batch_size=1024,
                                        verbose=0)[1])
    if dataset.x_val is not None:
        validation = float(model.evaluate(dataset.x_val, dataset.y_val, batch_size=1024,
                                          verbose=0)[1])
    export_dir = export.export_classifier(model, export_base, warmup_images=dataset.x_train[:8])
    logging.info("Teacher %s: test accuracy %s, validation accuracy %s, exported to %s",
                 config.architecture, accuracy, validation, export_dir)
    return {"export_dir": export_dir, "test_accuracy": accuracy, "validation_accuracy": validation,
            "parameters": models.count_parameters(model)}


def served_accuracy(client: teacher_lib.TeacherClient, images: np.ndarray, labels: np.ndarray,
                    progress: bool = False, stage: str = "evaluate") -> float:
    """Top-1 accuracy (fraction in [0, 1]) of a served classifier, queried over gRPC (queries
    charged to the client's account under ``stage``)."""
    predictions = client.soft_labels(images, progress=progress, stage=stage).argmax(axis=1)
    return float(np.mean(predictions == np.asarray(labels).reshape(-1)))


@dataclasses.dataclass
class LabelledSet:
    """Images with teacher soft labels, by source.

    Attributes:
      images: float32 [n, H, W, C] in [0, 1]; soft_labels: float32 [n, K]; source: int8 [n] with
      0 = real few-shot image, 1 = MixUp, 2 = CVAE.
    """

    images: np.ndarray
    soft_labels: np.ndarray
    source: np.ndarray

    SOURCES = ("real", "mixup", "cvae")

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, images=self.images, soft_labels=self.soft_labels, source=self.source)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "LabelledSet":
        with np.load(path) as f:
            return cls(f["images"], f["soft_labels"], f["source"])

    def count(self, source: str) -> int:
        return int(np.sum(self.source == self.SOURCES.index(source)))


def make_mixup(shots: np.ndarray, config: FSBBTConfig, stages: _Stages | None = None):
    """The MixUp images of FS-BBT §3.2 (float32 [num_mixup, H, W, C] in [0, 1]), or None."""
    if config.mixup.num_images <= 0:
        return None
    with (stages or _Stages())("mixup"):
        mixed, info = synthesis.mixup_images(shots, config.mixup, config.seed)
    logging.info("MixUp: %d images (%d pairs dropped as near-copies)", len(mixed),
                 info["num_dropped"])
    return mixed


def build_labelled_set(shots: np.ndarray, mixed: np.ndarray | None,
                       client: teacher_lib.TeacherClient, config: FSBBTConfig,
                       stages: _Stages | None = None) -> LabelledSet:
    """FS-BBT synthesis and labelling (§3.2-3.3): from the N unlabeled images to a labelled set.

    Takes images only: no label of the real images can reach synthesis or training. Queries are
    charged to the client's account under the stages ``label_real``, ``label_mixup``, ``label_cvae``.

    Args:
      shots: float32 [N, H, W, C] in [0, 1], the few unlabeled images.
      mixed: float32 [M, H, W, C] in [0, 1], the MixUp images (:func:`make_mixup`), or None.
      client: the black-box teacher.
      config: cvae counts and seeds; ``workdir`` for the CVAE weights.

    Returns:
      the :class:`LabelledSet` (real, MixUp, CVAE in that order).
    """
    stages = stages or _Stages()
    progress = config.verbose == 1  # Progress bars on a terminal only.
    with stages("label_real"):
        real_labels = client.soft_labels(shots, progress=progress, stage="label_real")
        num_classes = real_labels.shape[1]
    parts = [(shots, real_labels, 0)]
    if mixed is not None:
        with stages("label_mixup"):
            parts.append((mixed, client.soft_labels(mixed, progress=progress, stage="label_mixup"),
                          1))
    if config.cvae.num_images > 0:
        # The CVAE does not depend on how many images are sampled from it.
        weights = os.path.join(config.workdir, "cvae-" + fingerprint(
            config.dataset, config.data_dir, config.seed, config.num_shots,
            dataclasses.replace(config.cvae, num_images=0), client.signature.identity,
            client.label_only) + ".weights.h5")
        with stages("cvae_training"):
            if os.path.exists(weights):
                cvae = synthesis.build_cvae(shots.shape[1:], num_classes, config.cvae)
                cvae.load_weights(weights)
                logging.info("CVAE: reusing %s", weights)
            else:
                keras.utils.set_random_seed(config.seed)
                cvae, _ = synthesis.train_cvae(shots, real_labels.argmax(axis=1), num_classes,
                                               config.cvae, config.seed, verbose=config.verbose)
                cvae.save_weights(weights)
        with stages("cvae_sampling"):
            generated, _ = synthesis.sample_cvae(cvae, config.cvae.num_images, config.seed,
                                                 config.cvae.uniform_bound)
        with stages("label_cvae"):
            parts.append((generated, client.soft_labels(generated, progress=progress,
                                                        stage="label_cvae"), 2))
    sources = np.concatenate([np.full(len(images), source, np.int8) for images, _, source in parts])
    return LabelledSet(np.concatenate([p[0] for p in parts]).astype(np.float32),
                       np.concatenate([p[1] for p in parts]).astype(np.float32), sources)


def _query_figures(clients: list, account: teacher_lib.QueryAccount,
                   ledger: teacher_lib.QueryLedger) -> dict:
    """The report's query figures (see README, "What is counted"); ``clients``: this process's
    teacher clients (None entries are skipped)."""
    clients = [c for c in clients if c is not None]
    return {
        "teacher_queries_sent": account.sent,  # This process: every client, every attempt.
        "teacher_queries": account.sent,  # Older name of teacher_queries_sent.
        "teacher_queries_sent_by_stage": dict(account.sent_by_stage),
        "teacher_queries_total": account.total,  # The work dir's life: every process.
        "teacher_queries_by_stage": dict(account.by_stage),
        "teacher_queries_retried_total": account.retried,
        "teacher_ledger_hits": sum(c.ledger_hits for c in clients),
        "teacher_requests": sum(c.requests for c in clients),
        "teacher_retries": sum(c.retries for c in clients), "teacher_ledger_size": len(ledger),
        "query_budget": account.budget,
    }


def write_grids(labelled: LabelledSet, num_classes: int, workdir: str) -> dict[str, str]:
    """PNG grids (one row per teacher class) of the real, MixUp and CVAE images."""
    paths = {}
    classes = labelled.soft_labels.argmax(axis=1)
    for i, name in enumerate(LabelledSet.SOURCES):
        mask = labelled.source == i
        if mask.any():
            grid = viz.image_grid(labelled.images[mask], classes[mask], num_classes)
            paths[name] = viz.write_png(os.path.join(workdir, f"grid_{name}.png"), grid)
    return paths


def write_tensorboard_grids(labelled: LabelledSet, log_dir: str) -> None:
    """TensorBoard image summaries of the real, MixUp and CVAE grids (one row per teacher class)."""

    classes = labelled.soft_labels.argmax(axis=1)
    with tf.summary.create_file_writer(log_dir).as_default():
        for i, name in enumerate(LabelledSet.SOURCES):
            mask = labelled.source == i
            if mask.any():
                grid = viz.image_grid(labelled.images[mask], classes[mask],
                                      labelled.soft_labels.shape[1])
                tf.summary.image(name, grid[None], step=0)


@contextlib.contextmanager
def _serve(models_by_name: dict[str, str]):
    """An in-process tfkd model server on a free loopback port; yields its ``host:port``."""
    server = serving.ModelServer([serving.ModelConfig(n, p) for n, p in models_by_name.items()],
                                 poll_seconds=0)
    with server:
        yield server.target


def method_config(config: FSBBTConfig) -> FSBBTConfig:
    """The config with the synthetic counts ``config.method`` uses (see :class:`FSBBTConfig`).

    Raises:
      ValueError: unknown method.
    """
    if config.method not in METHODS:
        raise ValueError(f"method={config.method!r}: expected one of {METHODS}")
    total = config.mixup.num_images + config.cvae.num_images
    mixup_n, cvae_n = {"student_alone": (0, 0), "standard_kd": (0, 0), "mixup": (total, 0),
                       "cvae": (0, total), "fsbbt": (config.mixup.num_images,
                                                     config.cvae.num_images)}[config.method]
    return dataclasses.replace(
        config, mixup=dataclasses.replace(config.mixup, num_images=mixup_n),
        cvae=dataclasses.replace(config.cvae, num_images=cvae_n))


def run_fsbbt(config: FSBBTConfig, strategy=None) -> dict:
    """Runs FS-BBT end to end with the work dir locked (see :func:`_run_fsbbt`).

    Raises:
      tfkd.workdir.WorkdirError: another run holds the work dir, or its teacher was trained with
        other settings; and what :func:`_run_fsbbt` raises.
    """
    with workdir_lib.lock(config.workdir):
        return _run_fsbbt(config, strategy)


def _run_fsbbt(config: FSBBTConfig, strategy=None) -> dict:
    """Runs FS-BBT end to end and writes ``report.json`` in the work dir.

    ``strategy`` (default: :func:`tfkd.distill.make_strategy`, mirrored) trains the student. Under a
    multi-worker strategy every worker builds its labelled set in its own work dir and trains; only
    the chief exports, evaluates and writes the full report (a non-chief writes ``report.json`` with
    ``role: worker`` and returns after training).

    Every stage whose result is already in the work dir (teacher, ledger answers, labelled set,
    student epochs, CVAE weights) is reused, so a rerun after a crash pays for nothing twice.

    Returns:
      the report (see README for its fields); accuracies are fractions in [0, 1].

    Raises:
      tfkd.data.DatasetUnavailableError, tfkd.teacher.TeacherError, grpc.RpcError, ValueError.
    """
    config = method_config(config)
    os.makedirs(config.workdir, exist_ok=True)
    stages = _Stages()
    report: dict = {"method": config.method, "dataset": config.dataset, "seed": config.seed,
                    "code_commit": code_commit(),
                    # Every artifact this run may read back, validated; damaged ones set aside.
                    "damaged_artifacts": workdir_lib.check(config.workdir)}
    with stages("load_data"):
        dataset = data_lib.with_validation_split(
            data_lib.load_dataset(config.dataset, config.data_dir), config.num_validation)
    report["num_validation"] = 0 if dataset.x_val is None else len(dataset.x_val)
    teacher_arch = config.teacher_train.architecture
    teacher_base = os.path.join(config.workdir, "teacher")
    with contextlib.ExitStack() as stack:
        teacher_config = config.teacher
        local_teacher = not teacher_config.target
        if local_teacher:
            recipe = {**dataclasses.asdict(config.teacher_train), "dataset": config.dataset,
                      "data_dir": config.data_dir, "num_validation": config.num_validation,
                      "seed": config.seed}
            trained_now = export.latest_version_dir(teacher_base) is None
            if trained_now:
                with stages("teacher_training"):
                    trained = train_and_export_teacher(dataset, config.teacher_train, teacher_base,
                                                       config.seed, config.verbose)
                report["teacher_accuracy_in_process"] = trained["test_accuracy"]
                report["teacher_validation_accuracy_in_process"] = trained["validation_accuracy"]
            # The teacher in the work dir must be the one these settings describe.
            report["teacher_recipe"] = workdir_lib.check_recipe(
                os.path.join(teacher_base, "recipe.json"), recipe, "the teacher",
                assume_if_missing=not trained_now)
            target = stack.enter_context(_serve({teacher_config.model_name: teacher_base}))
            logging.info("Serving the teacher from %s on %s", teacher_base, target)
            teacher_config = dataclasses.replace(teacher_config, target=target)
            report["teacher_architecture"] = teacher_arch
        ledger_dir = os.path.join(config.workdir, "ledger")
        ledger = teacher_lib.QueryLedger(ledger_dir)
        account = teacher_lib.QueryAccount(ledger_dir, teacher_config.query_budget)
        client = stack.enter_context(teacher_config.connect(ledger, account))
        client.expect_num_classes(dataset.num_classes, f"dataset {config.dataset!r}")
        signature = client.signature
        report["teacher"] = {"target": teacher_config.target, "model_name": signature.model_name,
                             "version": signature.version, "signature": signature.signature_name,
                             "input": f"{signature.input_key} {np.dtype(signature.input_dtype).name}"
                                      f" {list(signature.input_shape)} x{signature.input_scale:g}",
                             "output": signature.output_key,
                             "output_kind": signature.output_kind,
                             "label_only": client.label_only}
        report["teacher_output_kind"] = ("classes (label-only view)" if client.label_only
                                         else signature.output_kind)

        # The N unlabeled images. Labels pick the balanced sample only through class membership
        # (see few_shot_indices); from here on only the images travel.
        index_path = os.path.join(config.workdir, "few_shot_indices.npy")
        indices = data_lib.few_shot_indices(dataset.y_train, config.num_shots, dataset.num_classes,
                                            config.seed)
        np.save(index_path, indices)
        shots = dataset.x_train[indices]

        synthesis_fp = fingerprint(config.dataset, config.data_dir, config.seed, config.num_shots,
                                   config.mixup, config.cvae, signature.identity, client.label_only)
        labelled_path = os.path.join(config.workdir, f"labelled_set-{synthesis_fp}.npz")
        strategy = strategy or distill.make_strategy()
        n_eval = (config.eval_examples or len(dataset.x_test)) if config.evaluate_test else 0
        x_eval, y_eval = dataset.x_test[:n_eval], dataset.y_test[:n_eval]
        eval_client = None
        if config.evaluate_teacher and n_eval and distill.is_chief(strategy):
            # The teacher's own test accuracy: read as probabilities, charged to the same account
            # (and so to the budget), answers kept in the ledger like every other query.
            eval_client = stack.enter_context(dataclasses.replace(
                teacher_config, label_only=False).connect(ledger, account))
            eval_client.expect_num_classes(dataset.num_classes, f"dataset {config.dataset!r}")

        # The query plan of this process, checked against the budget before anything is sent.
        plan = {"label_real": 0, "label_mixup": 0, "label_cvae": 0, "evaluate_teacher": 0}
        mixed = None
        if config.method != "student_alone" and not os.path.exists(labelled_path):
            mixed = make_mixup(shots, config, stages)
            plan.update(label_real=client.missing(shots),
                        label_mixup=0 if mixed is None else client.missing(mixed),
                        label_cvae=config.cvae.num_images)  # Unknown before the CVAE: all count.
        if eval_client is not None:
            plan["evaluate_teacher"] = eval_client.missing(x_eval)
        report["teacher_query_plan"] = plan
        account.check(sum(plan.values()), f"{client.name}: this run's plan ({plan}, less ledger "
                      "answers)")

        if config.method == "student_alone":
            # The paper's lower baseline: the N images with their true labels, no teacher.
            labelled = LabelledSet(shots, np.eye(dataset.num_classes, dtype=np.float32)[
                dataset.y_train[indices]], np.zeros(len(shots), np.int8))
            labelled_path = None
        elif os.path.exists(labelled_path):
            labelled = LabelledSet.load(labelled_path)
            logging.info("Labelled set: reusing %s (%d images)", labelled_path, len(labelled.images))
        else:
            labelled = build_labelled_set(shots, mixed, client, config, stages)
            labelled.save(labelled_path)
        report["labelled_set"] = labelled_path
        report["grids"] = write_grids(labelled, labelled.soft_labels.shape[1], config.workdir)
        report.update(num_shots=labelled.count("real"), num_mixup=labelled.count("mixup"),
                      num_cvae=labelled.count("cvae"))
        tensorboard_dir = os.path.join(config.workdir, "tensorboard")
        write_tensorboard_grids(labelled, os.path.join(tensorboard_dir, "synthesis"))
        callbacks = [keras.callbacks.TensorBoard(os.path.join(tensorboard_dir, "student"))]
        if dataset.x_val is not None:  # Monitoring reads the validation split, never the test split.
            callbacks.append(distill.ValidationAccuracy(
                dataset.x_val, dataset.y_val, os.path.join(tensorboard_dir, "student", "validation")))
        with stages("student_training"):
            student, history = distill.train_student(
                labelled.images, labelled.soft_labels, config.student, config.seed,
                backup_dir=os.path.join(config.workdir, "student_backup-" + fingerprint(
                    synthesis_fp, config.student, config.seed, config.method)), strategy=strategy,
                verbose=config.verbose, callbacks=callbacks)
        report["strategy"] = ("multi_worker" if isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy) else "mirrored")
        report["replicas"] = strategy.num_replicas_in_sync
        if not distill.is_chief(strategy):
            report.update(_query_figures([client], account, ledger), role="worker",
                          stage_seconds=stages.seconds, student_epochs=config.student.epochs)
            workdir_lib.write_json(os.path.join(config.workdir, "report.json"), report)
            return report
        report["role"] = "chief"
        report["student_final_loss"] = float(history["loss"][-1]) if history.get("loss") else None
        report["student_epochs"] = config.student.epochs
        report["student_epochs_resumed_from"] = config.student.epochs - len(history.get("loss", []))
        for variant in config.compress:
            if variant not in export.VARIANTS or variant == "float32":
                raise ValueError(f"compress: {variant!r} is not one of {export.VARIANTS[1:]}")
        with stages("export"):
            export_root = os.path.join(config.workdir, "export")
            student_dir = export.export_classifier(student, os.path.join(export_root, "student"),
                                                   warmup_images=shots[:8])
            variant_dirs = {"float32": student_dir}
            for variant in config.compress:
                variant_dirs[variant] = export.export_classifier(
                    student, os.path.join(export_root, f"student_{variant}"),
                    warmup_images=shots[:8], variant=variant)
        report["student_export_dir"] = os.path.abspath(student_dir)
        student_version = int(os.path.basename(student_dir))
        report["serving_configs"] = export.write_serving_configs(
            os.path.join(config.workdir, "serving"), teacher_base if local_teacher else None,
            os.path.dirname(student_dir), stable=max(1, student_version - 1),
            canary=student_version)
        report["student_architecture"] = config.student.architecture

        report["eval_examples"] = int(n_eval)
        if eval_client is not None:
            with stages("evaluate_teacher"):
                report["teacher_accuracy"] = served_accuracy(eval_client, x_eval, y_eval,
                                                             config.verbose == 1, "evaluate_teacher")
                report["teacher_eval_queries"] = eval_client.queries
        report.update(_query_figures([client, eval_client], account, ledger))
    with stages("evaluate_student"):
        served = {("student" if v == "float32" else f"student_{v}"): d for v, d in variant_dirs.items()}
        variants = {}
        with _serve({name: os.path.dirname(d) for name, d in served.items()}) as student_target:
            for (name, version_dir), variant in zip(served.items(), variant_dirs):
                with teacher_lib.TeacherClient(student_target, name,
                                               version=int(os.path.basename(version_dir))) as c:
                    variants[variant] = {
                        "accuracy": (served_accuracy(c, x_eval, y_eval, config.verbose == 1)
                                     if n_eval else None),
                        "validation_accuracy": (None if dataset.x_val is None else served_accuracy(
                            c, dataset.x_val, dataset.y_val)),
                        "export_dir": os.path.abspath(version_dir),
                        "parameters": export.saved_model_parameters(version_dir),
                        "saved_model_bytes": export.saved_model_bytes(version_dir),
                        "cpu_latency_ms": cpu_latency_ms(version_dir, shots),
                    }
        for figures in variants.values():
            base = variants["float32"]
            figures["accuracy_change"] = (None if figures["accuracy"] is None else
                                          round(figures["accuracy"] - base["accuracy"], 4))
            figures["bytes_ratio"] = round(figures["saved_model_bytes"] / base["saved_model_bytes"], 3)
        report["student_accuracy"] = variants["float32"]["accuracy"]
        report["student_validation_accuracy"] = variants["float32"]["validation_accuracy"]
        report["student_variants"] = variants

    report["student_parameters"] = models.count_parameters(student)
    report["student_saved_model_bytes"] = export.saved_model_bytes(student_dir)
    teacher_dir = export.latest_version_dir(teacher_base)
    if local_teacher and teacher_dir:
        report["teacher_parameters"] = export.saved_model_parameters(teacher_dir)
        report["teacher_saved_model_bytes"] = export.saved_model_bytes(teacher_dir)
    else:  # A remote black box: its size is not ours to know.
        report["teacher_parameters"] = None
        report["teacher_saved_model_bytes"] = None
    report["stage_seconds"] = stages.seconds
    report["total_seconds"] = round(sum(stages.seconds.values()), 2)
    workdir_lib.write_json(os.path.join(config.workdir, "report.json"), report)
    return report


def code_commit() -> str | None:
    """The git commit of the tfkd checkout that runs (``+dirty`` with uncommitted changes), or None
    outside a git checkout: recorded in ``report.json`` so that a figure can be traced to code."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "tfkd"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def cpu_latency_ms(version_dir: str, images: np.ndarray, batch_sizes=(1, 64),
                   repeats: int = 30) -> dict[str, float]:
    """Median in-process CPU latency (ms) of a SavedModel's ``serving_default`` per batch size."""
    fn = tf.saved_model.load(version_dir).signatures[export.SIGNATURE_KEY]
    result = {}
    for b in batch_sizes:
        batch = tf.constant(images[:b])
        fn(images=batch)  # Warm-up.
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(images=batch)[export.PROBABILITIES_KEY].numpy()
            times.append((time.perf_counter() - start) * 1000)
        result[f"batch_{b}"] = round(float(np.median(times)), 3)
    return result


def format_report_table(report: dict) -> str:
    """A short plain-text table of the figures of a report."""

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def num(v):
        return "-" if v is None else f"{v:,}"

    rows = [
        ("dataset", report.get("dataset")),
        ("N (real images)", num(report.get("num_shots"))),
        ("MixUp images", num(report.get("num_mixup"))),
        ("CVAE images", num(report.get("num_cvae"))),
        ("teacher queries sent", num(report.get("teacher_queries"))),
        ("teacher ledger hits", num(report.get("teacher_ledger_hits"))),
        ("teacher accuracy (served)", pct(report.get("teacher_accuracy"))),
        ("student accuracy (served)", pct(report.get("student_accuracy"))),
        ("student validation accuracy", pct(report.get("student_validation_accuracy"))),
        ("test images", num(report.get("eval_examples"))),
        ("teacher params / bytes",
         f"{num(report.get('teacher_parameters'))} / {num(report.get('teacher_saved_model_bytes'))}"),
        ("student params / bytes",
         f"{num(report.get('student_parameters'))} / {num(report.get('student_saved_model_bytes'))}"),
    ]
    for variant, figures in report.get("student_variants", {}).items():
        rows.append((f"student {variant}",
                     f"{pct(figures['accuracy'])}, {num(figures['saved_model_bytes'])} bytes, "
                     f"{figures['cpu_latency_ms'].get('batch_1', 0):.2f} ms (batch 1)"))
    rows += [(f"seconds: {k}", f"{v:.1f}") for k, v in report.get("stage_seconds", {}).items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
