"""One pipeline for every method: data -> teacher -> transfer set -> student -> export -> evaluation.

:func:`run` is what ``launch/distill.py`` calls. Its stages, each a short function with typed inputs
and outputs: :func:`load_data`, :func:`connect_teacher` (a remote TF Serving teacher, or one trained
into the work dir and served on a loopback port), :func:`build_transfer_set` (the method, a plug-in
of :mod:`tfkd.methods`, with its query plan checked against the budget first),
:func:`train_student`, :func:`export_student`, :func:`evaluate_teacher`,
:func:`evaluate_students` (served over gRPC), and the :class:`tfkd.report.Report`. Every artifact
worth keeping is reused by fingerprint through :func:`tfkd.workdir.reuse_or_build`, so a rerun after
a crash pays for nothing twice.

Work dir layout::

    .lock                        held by the run using the work dir (a second run is refused)
    flags.json                   the launcher's flags
    teacher/<version>/           the teacher SavedModel, when tfkd trains it (teacher="" only)
    teacher/recipe.json          the settings that trained it (a rerun with others is refused)
    ledger/*.npz                 every teacher answer, persisted as it arrives (never asked twice)
    ledger/queries_sent.log      every image sent to the teacher, charged before it is sent
    few_shot_indices.npy         which images of the pool (training split less the validation
                                 split) are the N shots (their labels are never read)
    cvae-<fp>.weights.h5         the trained CVAE (FS-BBT family)
    transfer_set-<fp>.npz        the transfer set: images, targets, sources (persisted once)
    grid_<source>.png            transfer-set images per teacher class, per source
    student_backup-<fp>/         Keras BackupAndRestore state: a rerun resumes training
    tensorboard/                 student losses, learning rate, validation accuracy; image grids
    export/student/<version>/    the student SavedModel, TF Serving layout (student_<variant>/ too)
    serving/                     models.config (stable/canary labels), batching, monitoring configs
    report.json                  :class:`tfkd.report.Report`
    *.damaged-<time>             artifacts found damaged and set aside (see :mod:`tfkd.workdir`)

``<fp>`` is a fingerprint of everything the artifact depends on (configs, seed, teacher identity),
so a rerun with the same settings reuses it and a rerun with other settings does not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import boundary
from tfkd import client as client_lib
from tfkd import cluster
from tfkd import data as data_lib
from tfkd import distill
from tfkd import export
from tfkd import fs
from tfkd import images as images_lib
from tfkd import impressions
from tfkd import methods
from tfkd import model_card
from tfkd import models
from tfkd import serving
from tfkd import synthesis
from tfkd import teacher as teacher_lib
from tfkd import vertex
from tfkd import viz
from tfkd import workdir as workdir_lib
from tfkd import zeroshot
from tfkd.report import Report


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig:
    """Training of a teacher on the training split (what its owner would have done).

    ``architecture`` ``auto``: the paper's teacher for the dataset (:data:`tfkd.models.DEFAULT_PAIRS`).

    Adam with cosine decay of the learning rate to 0 (a constant rate leaves LeNet-5 below 89% on
    Fashion-MNIST after 20 epochs; see BUILD_NOTES.md).
    """

    architecture: str = "auto"
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Everything one run needs; defaults are FS-BBT's Fashion-MNIST setting.

    Attributes:
      workdir: where everything of the run is written (see module docstring).
      method: a registered method (:func:`tfkd.methods.names`; the FS-BBT family's table is in
        :mod:`tfkd.methods.fsbbt`).
      dataset, data_dir: see :func:`tfkd.data.load_dataset`.
      images: the user's own images in place of ``dataset`` (:class:`tfkd.images.ImageSourceConfig`):
        unlabeled few shots at the teacher's input size, and optional evaluation images (labelled
        by class sub-folders, or not: then the report gives fidelity). Needs a remote
        ``teacher.target``; ``num_validation`` must be 0 (there are no labels to validate on).
      seed: one seed for sampling, synthesis and training.
      num_shots: N, the unlabeled real images (balanced over classes); with ``images``, a uniform
        draw of N of them (0: all).
      teacher: how to reach and read the teacher (:class:`tfkd.teacher.TeacherConfig`); an empty
        ``target`` trains a teacher into the work dir if none is there, serves it on a free loopback
        port, and stops it at the end. ``teacher.query_budget`` caps the images sent.
      teacher_train: used only when tfkd trains the teacher.
      mixup, cvae: the FS-BBT family's synthesis (their ``num_images`` are its synthetic budget).
      db3kd: the DB3KD family's boundary search and soft-label temperature.
      zsdb3kd: ZSDB3KD's pseudo-sample schedule.
      zskd: ZSKD's Data Impression search (``zskd`` and ``zskd_blackbox``).
      zskd_blackbox: how ``zskd_blackbox`` estimates image gradients from queries.
      teacher_saved_model: the teacher's SavedModel (a version directory, or a TF Serving base path:
        its newest version), loaded in-process by a method that needs the teacher's weights
        (``zskd``); with a remote ``teacher.target`` it is required for such a method.
      student: how the student trains (a method may name its own loss).
      num_validation: training images held out as the validation split (the same images for
        every seed and method; see :func:`tfkd.data.with_validation_split`): neither the teacher
        tfkd trains nor the few shots come from them. Choices and training-time monitoring use
        them; the test split is read once, for the reported accuracies. 0: no validation split.
      eval_examples: test images used for the accuracies (0: the full test set).
      evaluate_test: measure the test accuracies. False for runs that only make a choice on the
        validation split: the test split is then not read at all.
      evaluate_teacher: also measure the teacher's test accuracy over gRPC (costs test-set queries,
        counted in the work dir's query account and budget like every other query).
      compress: compressed student variants to export and measure besides float32 (see
        :data:`tfkd.export.VARIANTS`), each in ``export/student_<variant>/<version>/``.
      verbose: Keras verbosity: 0 silent, 1 progress bars (also for labelling), 2 one line per epoch.
      outputs: where the exported student, the student's checkpoints and TensorBoard events also
        or instead go (:class:`tfkd.vertex.OutputDirs`; Vertex AI's ``AIP_*`` directories).
    """

    workdir: str
    method: str = "fsbbt"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    images: images_lib.ImageSourceConfig | None = None
    seed: int = 0
    num_shots: int | None = None
    num_validation: int | None = None
    teacher: teacher_lib.TeacherConfig = teacher_lib.TeacherConfig()
    teacher_train: TeacherTrainConfig = TeacherTrainConfig()
    mixup: synthesis.MixUpConfig = synthesis.MixUpConfig()
    cvae: synthesis.CVAEConfig = synthesis.CVAEConfig()
    student: distill.StudentConfig = distill.StudentConfig()
    db3kd: boundary.BoundaryConfig = boundary.BoundaryConfig()
    zsdb3kd: zeroshot.ZeroShotConfig = zeroshot.ZeroShotConfig()
    zskd: impressions.ImpressionConfig = impressions.ImpressionConfig()
    zskd_blackbox: impressions.ZerothOrderConfig = impressions.ZerothOrderConfig()
    teacher_saved_model: str | None = None
    eval_examples: int = 0
    evaluate_test: bool = True
    evaluate_teacher: bool = True
    compress: tuple = ("float16", "int8")
    verbose: int | None = None
    outputs: vertex.OutputDirs = vertex.OutputDirs()

    def resolved(self) -> "DistillConfig":
        """This config with every setting left unset (None, ``auto``) given its default, the one
        place those defaults are decided (the launcher passes what the user left out as unset):

        * from the data: ``num_shots`` the paper's N (:data:`tfkd.models.DEFAULT_NUM_SHOTS`; with
          ``images``, 0: all), ``num_validation`` :data:`NUM_VALIDATION` (0 with ``images``), the
          paper's teacher and student architectures (:data:`tfkd.models.DEFAULT_PAIRS`;
          ``mobilenet_v3_small`` for the user's images) and the CVAE's (``mlp`` for 28x28 grey,
          ``conv`` for CIFAR; with ``images`` it is chosen at their size);
        * from the method: its student recipe (:attr:`tfkd.methods.Method.student_defaults`, then
          :data:`tfkd.distill.RECIPE`) and its own settings (:meth:`tfkd.methods.Method.resolve`);
        * ``verbose``: 1 (progress bars) on a terminal, 2 (a line per epoch) otherwise.

        Idempotent. Raises ValueError for an unknown ``dataset`` or ``method``.
        """
        method = methods.get(self.method)
        if self.dataset not in data_lib.SUPPORTED_DATASETS:
            raise ValueError(f"dataset={self.dataset!r}: expected one of "
                             f"{data_lib.SUPPORTED_DATASETS}")
        own = self.images is not None
        teacher_arch, student_arch = models.DEFAULT_PAIRS[self.dataset]
        cvae_arch = self.cvae.architecture
        if cvae_arch == "auto" and not own:
            cvae_arch = "conv" if self.dataset.startswith("cifar") else "mlp"
        config = dataclasses.replace(
            self,
            num_shots=(self.num_shots if self.num_shots is not None
                       else 0 if own else models.DEFAULT_NUM_SHOTS[self.dataset]),
            num_validation=(self.num_validation if self.num_validation is not None
                            else 0 if own else NUM_VALIDATION),
            teacher_train=(self.teacher_train if self.teacher_train.architecture != "auto" else
                           dataclasses.replace(self.teacher_train, architecture=teacher_arch)),
            cvae=dataclasses.replace(self.cvae, architecture=cvae_arch),
            student=self.student.resolved({"architecture": "mobilenet_v3_small" if own
                                           else student_arch, **dict(method.student_defaults)}),
            verbose=self.verbose if self.verbose is not None else 1 if sys.stdout.isatty() else 2)
        return method.resolve(config)

    def validate(self) -> None:
        """Checks every setting that can be checked without data, teacher or training (as
        :meth:`resolved` fills them).

        Raises:
          ValueError: naming the first field out of range and what it accepts.
        """
        self.resolved()._check()

    def _check(self) -> None:
        method = methods.get(self.method)
        checks = [
            ("num_shots", self.num_shots, self.num_shots >= (0 if self.images else 1),
             ">= 1 (0, all, only with images)"),
            ("num_validation", self.num_validation, self.num_validation >= 0, ">= 0"),
            ("eval_examples", self.eval_examples, self.eval_examples >= 0, ">= 0"),
            ("verbose", self.verbose, self.verbose in (0, 1, 2), "0, 1 or 2"),
            ("compress", self.compress, set(self.compress) <= set(export.VARIANTS[1:]),
             export.VARIANTS[1:]),
            ("teacher_train.architecture", self.teacher_train.architecture,
             self.teacher_train.architecture in models.MODELS, models.MODELS),
            ("cvae.architecture", self.cvae.architecture,
             self.cvae.architecture in ("mlp", "conv", "auto"), ("mlp", "conv", "auto")),
            ("cvae.working_size", self.cvae.working_size, self.cvae.working_size >= 0, ">= 0"),
            ("method loss", method.loss, method.loss in (None, *distill.LOSSES), distill.LOSSES),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}={value!r}: expected {expected}")
        self.teacher.validate(require_target=False)
        self.student.validate()
        self.db3kd.validate()
        self.zsdb3kd.validate()
        self.zskd.validate()
        self.zskd_blackbox.validate()
        if self.images is not None:
            self._validate_images(method)
        if method.teacher_needs == "weights" and self.teacher.target and not self.teacher_saved_model:
            raise ValueError(
                f"method={self.method!r} needs the teacher's weights and gradients, which the "
                f"endpoint {self.teacher.target} does not give: pass --teacher_saved_model=PATH "
                f"(the SavedModel its TF Serving base path holds), or use --method="
                f"{self.method}_blackbox, which needs only the endpoint")


    def _validate_images(self, method: methods.Method) -> None:
        self.images.validate()
        refusals = [
            (not self.teacher.target, "needs --teacher=host:port (tfkd trains a teacher only on a "
             "named dataset)"),
            (self.num_validation != 0, f"needs num_validation=0, got {self.num_validation} (the "
             "images have no labels to validate on; --eval_images evaluates)"),
            (method.reads_true_labels, f"cannot run method={self.method!r}: it reads true labels "
             "and the images have none"),
        ]
        for refused, why in refusals:
            if refused:
                raise ValueError(f"images={self.images.path!r}: {why}")


NUM_VALIDATION = 5000
"""The validation split's size on a named dataset (:attr:`DistillConfig.num_validation`)."""


class StageTimer:
    """``with timer("name"):`` adds the block's wall-clock seconds to ``seconds["name"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        logging.info("Stage %s: start", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
        logging.info("Stage %s: done in %.1f s", name, self.seconds[name])


@dataclasses.dataclass
class TeacherLink:
    """The connected teacher of a run.

    Attributes:
      client: the :class:`tfkd.teacher.TeacherClient` methods label with (label-only view if asked).
      labeller: ``client`` as this worker of the cluster asks it (:class:`tfkd.cluster.ShardedTeacher`).
      eval_client: a probability view for the teacher's own test accuracy (chief only), or None.
      account, ledger: the work dir's query account and answer ledger (shared by both clients).
      local_base: the base path of a teacher tfkd trained and serves, or None for a remote one.
    """

    client: teacher_lib.TeacherClient
    labeller: cluster.ShardedTeacher
    eval_client: teacher_lib.TeacherClient | None
    account: teacher_lib.QueryAccount
    ledger: teacher_lib.QueryLedger
    local_base: str | None


def run(config: DistillConfig, strategy: tf.distribute.Strategy | None = None,
        flags: dict | None = None) -> Report:
    """Runs a distillation end to end with the work dir locked, and writes ``report.json``.

    ``flags`` (a launcher's flag values, name -> value) are written to ``<workdir>/flags.json``
    once the lock is held: a run refused because another holds the work dir leaves that run's
    record as it was.

    ``strategy`` (default: :func:`tfkd.distill.make_strategy`, mirrored) trains the student. Under
    MultiWorkerMirroredStrategy every worker runs this with its own work dir: each asks the teacher
    about its shard of every image set and all get every answer (:mod:`tfkd.cluster`), all train in
    step, and only the chief exports, evaluates and writes the full report (a worker's report has
    ``role: worker``).

    Returns:
      the :class:`tfkd.report.Report`.

    Raises:
      ValueError: a setting out of range (before anything is read or sent).
      tfkd.workdir.WorkdirError: the work dir (or an output dir) cannot be written, another run
        holds the work dir, or its teacher was trained with other settings.
      tfkd.data.DatasetUnavailableError, tfkd.teacher.TeacherError (QueryBudgetExceeded included).
    """
    config = config.resolved()
    config.validate()
    method = methods.get(config.method)
    workdir_lib.check_usable(config.workdir)
    for name, directory in config.outputs.to_dict().items():  # Vertex AI's AIP_* directories.
        workdir_lib.check_usable(directory, f"outputs.{name}")
    with workdir_lib.lock(config.workdir):
        if flags is not None:
            workdir_lib.write_json(os.path.join(config.workdir, "flags.json"), flags)
        return _run(config, method, strategy or distill.make_strategy())


def _run(config: DistillConfig, method: methods.Method, strategy) -> Report:
    timer = StageTimer()
    report = Report(method=config.method, dataset=config.dataset, seed=config.seed,
                    code_commit=code_commit(),
                    # Every artifact this run may read back, validated; damaged ones set aside.
                    damaged_artifacts=workdir_lib.check(config.workdir))
    with contextlib.ExitStack() as stack:
        if config.images is None:
            dataset = load_data(config, timer)
            link = connect_teacher(config, method, dataset, strategy, stack, timer, report)
        else:  # The images are read at the teacher's input size: the teacher comes first.
            link = connect_teacher(config, method, None, strategy, stack, timer, report)
            dataset = load_images(config, link, timer, report)
        report.num_validation = 0 if dataset.x_val is None else len(dataset.x_val)
        x_eval, y_eval = eval_split(config, dataset)
        report.eval_examples = len(x_eval)
        config = fit_query_budget(config, method, dataset, link, len(x_eval), strategy, report)
        transfer = build_transfer_set(config, method, dataset, link, x_eval, timer, report,
                                      strategy)
        student = train_student(config, method, dataset, transfer,
                                workdir_lib.fingerprint(*transfer_key(config, method, link)),
                                strategy, timer, report)
        if not distill.is_chief(strategy):
            report.update(role="worker", stage_seconds=timer.seconds, **query_figures(link))
            report.write(os.path.join(config.workdir, "report.json"))
            return report
        report.role = "chief"
        variant_dirs = export_student(config, student, transfer.images[:8], link.local_base,
                                      dataset.class_names, timer, report)
        teacher_top1 = evaluate_teacher(config, link, x_eval, y_eval, timer, report)
        report.update(**query_figures(link))
    evaluate_students(config, dataset, variant_dirs, transfer, x_eval, y_eval,
                      teacher_top1, timer, report)
    check_served_agreement(config, variant_dirs, dataset.num_classes, report)
    return finish(config, student, variant_dirs, link.local_base, timer, report)


def load_data(config: DistillConfig, timer: StageTimer) -> data_lib.Dataset:
    """The dataset with its validation split held out (:func:`tfkd.data.with_validation_split`)."""
    with timer("load_data"):
        return data_lib.with_validation_split(
            data_lib.load_dataset(config.dataset, config.data_dir), config.num_validation)


def load_images(config: DistillConfig, link: TeacherLink, timer: StageTimer,
                report: Report) -> data_lib.Dataset:
    """The user's images as a :class:`tfkd.data.Dataset`: ``num_shots`` of ``config.images.path``
    (seeded uniform draw; all for 0) as ``x_train`` without labels, the evaluation images as
    ``x_test`` (labels from class sub-folders, else None). The files drawn are recorded in
    ``few_shot_files.txt``.

    Raises:
      tfkd.images.ImageSourceError: no image, more shots asked than there are, or labels that
        cannot be read; ValueError: an image size the teacher does not give.
    """
    source = config.images
    shape = source.image_shape(link.client.signature.input_shape)
    num_classes = link.client.num_data_classes
    def draw(pool: int) -> np.ndarray | None:
        if config.num_shots > pool:
            raise images_lib.ImageSourceError(
                f"num_shots={config.num_shots}: expected at most the {pool} images of "
                f"images={source.path!r} (0: all of them)")
        return (None if config.num_shots in (0, pool) else np.random.default_rng(
            config.seed).choice(pool, config.num_shots, replace=False))

    with timer("load_images"):
        shots = images_lib.load_images(source.path, shape, source.image_key, select=draw)
        fs.write_atomic(os.path.join(config.workdir, "few_shot_files.txt"),
                               "\n".join(shots.names) + "\n")
        evaluation, order = None, None
        if source.eval_path:
            names = (images_lib.read_class_names(source.class_names) if source.class_names
                     else None)
            evaluation, order = images_lib.load_labelled(source.eval_path, shape, num_classes, names)
    empty = np.zeros((0, *shape), np.float32)
    report.update(dataset=f"images:{source.path}", images={
        "path": source.path, "eval_path": source.eval_path, "image_shape": list(shape),
        "pool": shots.pool, "skipped": len(shots.skipped),
        "eval_skipped": None if evaluation is None else len(evaluation.skipped),
        "eval_labelled": None if evaluation is None else evaluation.labels is not None,
        "class_names": None if order is None else list(order),
        "images_per_second": shots.images_per_second,
        "eval_images_per_second": None if evaluation is None else evaluation.images_per_second})
    return data_lib.Dataset(
        name="images", x_train=shots.images, y_train=None,
        x_test=empty if evaluation is None else evaluation.images,
        y_test=None if evaluation is None else evaluation.labels,
        num_classes=num_classes, source=source.path, classes=order)


def eval_split(config: DistillConfig,
               dataset: data_lib.Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """The test images and labels (None: unlabeled images) the accuracies and fidelity are
    measured on (none without ``evaluate_test``)."""
    n = (config.eval_examples or len(dataset.x_test)) if config.evaluate_test else 0
    return dataset.x_test[:n], None if dataset.y_test is None else dataset.y_test[:n]


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
    if config.architecture == "auto":
        config = dataclasses.replace(config, architecture=models.DEFAULT_PAIRS.get(
            dataset.name, ("lenet5",))[0])
    model = models.build_model(config.architecture, dataset.image_shape, dataset.num_classes)
    steps = config.epochs * -(-len(dataset.x_train) // config.batch_size)
    lr = distill.learning_rate(config.learning_rate, config.lr_schedule, steps)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.fit(dataset.x_train, dataset.y_train, batch_size=config.batch_size, epochs=config.epochs,
              verbose=verbose, shuffle=True)

    def accuracy(x, y):
        return float(model.evaluate(x, y, batch_size=1024, verbose=0)[1])

    test = accuracy(dataset.x_test, dataset.y_test) if evaluate_test else None
    validation = None if dataset.x_val is None else accuracy(dataset.x_val, dataset.y_val)
    export_dir = export.export_classifier(model, export_base, warmup_images=dataset.x_train[:8])
    logging.info("Teacher %s: test accuracy %s, validation accuracy %s, exported to %s",
                 config.architecture, test, validation, export_dir)
    return {"export_dir": export_dir, "test_accuracy": test, "validation_accuracy": validation,
            "parameters": models.count_parameters(model)}


@contextlib.contextmanager
def serve(models_by_name: dict[str, str]):
    """An in-process tfkd model server on a free loopback port; yields its ``host:port``."""
    server = serving.ModelServer([serving.ModelConfig(n, p) for n, p in models_by_name.items()],
                                 poll_seconds=0)
    with server:
        yield server.target


def local_teacher(config: DistillConfig, dataset: data_lib.Dataset, stack: contextlib.ExitStack,
                  timer: StageTimer, report: Report) -> tuple[str, str]:
    """Trains the work dir's teacher if none is there (checking its recipe otherwise) and serves it
    until ``stack`` closes. Returns (target, base path)."""
    base = os.path.join(config.workdir, "teacher")
    recipe = {**dataclasses.asdict(config.teacher_train), "dataset": config.dataset,
              "data_dir": config.data_dir, "num_validation": config.num_validation,
              "seed": config.seed}
    trained_now = export.latest_version_dir(base) is None
    if trained_now:
        with timer("teacher_training"):
            trained = train_and_export_teacher(dataset, config.teacher_train, base, config.seed,
                                               config.verbose)
        report.update(teacher_accuracy_in_process=trained["test_accuracy"],
                      teacher_validation_accuracy_in_process=trained["validation_accuracy"])
    # The teacher in the work dir must be the one these settings describe.
    report.teacher_recipe = workdir_lib.check_recipe(
        os.path.join(base, "recipe.json"), recipe, "the teacher", assume_if_missing=not trained_now)
    report.teacher_architecture = config.teacher_train.architecture
    target = stack.enter_context(serve({config.teacher.model_name: base}))
    logging.info("Serving the teacher from %s on %s", base, target)
    return target, base


def connect_teacher(config: DistillConfig, method: methods.Method,
                    dataset: data_lib.Dataset | None, strategy, stack: contextlib.ExitStack,
                    timer: StageTimer, report: Report) -> TeacherLink:
    """Connects to the teacher (trained and served locally for an empty target) with the work dir's
    ledger and query account; checks its classes against the data's before any query (``dataset``
    None: the user's images, whose classes are the teacher's). A method that needs only top-1
    labels gets the label-only view."""
    teacher_config, base = config.teacher, None
    if method.teacher_needs == "top1_labels":
        teacher_config = dataclasses.replace(teacher_config, label_only=True)
    if not teacher_config.target:
        target, base = local_teacher(config, dataset, stack, timer, report)
        teacher_config = dataclasses.replace(teacher_config, target=target)
    ledger_dir = os.path.join(config.workdir, "ledger")
    ledger = teacher_lib.QueryLedger(ledger_dir)
    account = teacher_lib.QueryAccount(ledger_dir, teacher_config.query_budget)
    client = stack.enter_context(teacher_lib.TeacherClient(teacher_config, ledger, account))
    data_name = f"dataset {config.dataset!r}"
    if dataset is None:
        data_name = f"images {config.images.path!r}"
    num_classes = dataset.num_classes if dataset else user_num_classes(config, client)
    client.expect_num_classes(num_classes, data_name)
    eval_client = None
    if config.evaluate_teacher and config.evaluate_test and distill.is_chief(strategy):
        # The teacher's own test accuracy: read as probabilities, charged to the same account
        # (and so to the budget), answers kept in the ledger like every other query.
        eval_client = stack.enter_context(teacher_lib.TeacherClient(
            dataclasses.replace(teacher_config, label_only=False), ledger, account))
        eval_client.expect_num_classes(num_classes, data_name)
    s = client.signature
    report.teacher = {"target": teacher_config.target, "model_name": s.model_name,
                      "version": s.version, "signature": s.signature_name,
                      "input": f"{s.input_key} {np.dtype(s.input_dtype).name} "
                               f"{list(s.input_shape)} x{s.input_scale:g}",
                      "output": s.output_key, "output_kind": s.output_kind,
                      "label_only": client.label_only}
    report.teacher_output_kind = ("classes (label-only view)" if client.label_only
                                  else s.output_kind)
    return TeacherLink(client, cluster.ShardedTeacher(client, strategy), eval_client, account,
                       ledger, base)


def user_num_classes(config: DistillConfig, client: teacher_lib.TeacherClient) -> int:
    """K for the user's images: the teacher's (its class map's, its metadata's), else the number of
    names in the class-name file.

    Raises:
      ValueError: neither says.
    """
    if client.class_map is not None:
        return max(client.class_map) + 1
    if client.signature.num_classes:
        return client.signature.num_classes
    if config.images.class_names:
        return len(images_lib.read_class_names(config.images.class_names))
    raise ValueError(f"images={config.images.path!r}: the teacher's metadata does not say how many "
                     "classes it has (class ids output); give --class_names (one per line)")


def few_shot(config: DistillConfig,
             dataset: data_lib.Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """The N few-shot images float32 [N, H, W, C] and their labels int [N] (recorded in
    ``few_shot_indices.npy``). Labels pick the balanced sample only through class membership; only
    a method that ``reads_true_labels`` is given them. The user's images (no labels) were drawn
    when read (:func:`load_images`): they are the shots, labels None."""
    if dataset.y_train is None:
        return dataset.x_train, None
    indices = data_lib.few_shot_indices(dataset.y_train, config.num_shots, dataset.num_classes,
                                        config.seed)
    fs.save_npy(os.path.join(config.workdir, "few_shot_indices.npy"), indices)
    return dataset.x_train[indices], dataset.y_train[indices]


def transfer_key(config: DistillConfig, method: methods.Method, link: TeacherLink) -> tuple:
    """What a transfer set depends on: its fingerprint's parts."""
    key = (method.name, config.dataset, config.data_dir, config.seed, config.num_shots,
           method.fingerprint(config), link.client.signature.identity, link.client.label_only)
    return key if config.images is None else (*key, config.images)


def fit_query_budget(config: DistillConfig, method: methods.Method, dataset: data_lib.Dataset,
                     link: TeacherLink, num_eval: int, strategy, report: Report) -> DistillConfig:
    """The run's config with the method's plan cut to the query budget (:meth:`Method.fit_budget`):
    what the budget leaves after the teacher's evaluation (``num_eval`` images when the teacher is
    evaluated) and the N real images goes to synthetic images. The student keeps the training
    length (optimizer steps) the full plan would have had, unless ``student.steps`` is set. The
    config is unchanged without a budget, or when the plan fits.
    """
    budget = config.teacher.query_budget
    if budget is None or method.teacher_needs == "none":
        return config
    reserved = num_eval if link.eval_client is not None else 0
    num_real = config.num_shots if dataset.y_train is not None else len(dataset.x_train)
    fitted = method.fit_budget(config, budget - reserved, num_real)
    if fitted == config:
        return config
    student, wanted = config.student, config.mixup.num_images + config.cvae.num_images
    if student.steps == 0:  # The full plan's steps: its epochs over N + the synthetic images asked.
        global_batch = student.batch_size * strategy.num_replicas_in_sync
        steps = student.epochs * ((num_real + wanted) // global_batch)
        fitted = dataclasses.replace(fitted, student=dataclasses.replace(student, steps=steps))
    report.query_plan_fitted = {
        "budget": budget, "reserved": reserved, "num_real": num_real, "wanted": wanted,
        "num_mixup": fitted.mixup.num_images, "num_cvae": fitted.cvae.num_images,
        "student_steps": fitted.student.steps}
    logging.warning("Query budget %d: the plan is cut to %d MixUp + %d CVAE images (%d asked "
                    "for) beside %d real images and %d for the teacher's evaluation; the student "
                    "keeps %d training steps", budget, fitted.mixup.num_images,
                    fitted.cvae.num_images, wanted, num_real, reserved, fitted.student.steps)
    return fitted


def plan_queries(method: methods.Method, ctx: methods.MethodContext, link: TeacherLink,
                 x_eval: np.ndarray, reuse: bool) -> dict[str, int]:
    """This process's query plan by stage (the method's, unless its transfer set is reused, and
    the teacher's evaluation), checked against the budget before anything is sent.

    Raises:
      tfkd.teacher.QueryBudgetExceeded: the plan needs more than the budget leaves.
    """
    plan = {} if reuse or ctx.teacher is None else dict(method.plan(ctx))
    plan["evaluate_teacher"] = link.eval_client.missing(x_eval) if link.eval_client else 0
    link.account.check(sum(plan.values()), f"{link.client.name}: this run's plan ({plan}, less "
                       "ledger answers)")
    return plan


def saved_model_dir(path: str) -> str:
    """A SavedModel version directory: ``path`` itself if it holds ``saved_model.pb``, else the
    newest numeric version under it (a TF Serving base path).

    Raises:
      ValueError: neither.
    """
    if fs.exists(os.path.join(path, "saved_model.pb")):
        return path
    newest = export.latest_version_dir(path)
    if newest is None:
        raise ValueError(f"teacher_saved_model={path!r}: expected a SavedModel directory "
                         f"(saved_model.pb) or a base path of numeric versions; found neither")
    return newest


def build_transfer_set(config: DistillConfig, method: methods.Method, dataset: data_lib.Dataset,
                       link: TeacherLink, x_eval: np.ndarray, timer: StageTimer,
                       report: Report, strategy=None) -> methods.TransferSet:
    """The method's transfer set, built once and persisted (reused by fingerprint after).

    Raises:
      ValueError: the method built a set of the wrong image shape or class count.
      tfkd.teacher.QueryBudgetExceeded, tfkd.teacher.TeacherError.
    """
    shots, labels = few_shot(config, dataset)
    ctx = methods.MethodContext(
        config, shots, dataset.num_classes,
        teacher=None if method.teacher_needs == "none" else link.labeller,
        few_shot_labels=labels if method.reads_true_labels else None, stage=timer,
        strategy=strategy,
        teacher_saved_model=(saved_model_dir(config.teacher_saved_model or link.local_base)
                             if method.teacher_needs == "weights" else None))
    path = None  # A set that asked no teacher cost nothing to keep.
    if method.teacher_needs != "none":
        path = workdir_lib.artifact_path(config.workdir, "transfer_set", ".npz",
                                         *transfer_key(config, method, link))
    report.teacher_query_plan = plan_queries(method, ctx, link, x_eval,
                                             reuse=path is not None and fs.exists(path))
    if path is None:
        transfer = method.build(ctx)
    else:
        transfer, _ = workdir_lib.reuse_or_build(path, lambda: method.build(ctx),
                                                 lambda t, p: t.save(p), methods.TransferSet.load,
                                                 "Transfer set")
    report.update(**ctx.findings)
    expected = (dataset.image_shape, dataset.num_classes)
    if (transfer.images.shape[1:], transfer.targets.shape[1]) != expected:
        raise ValueError(f"method {method.name!r}: built images {list(transfer.images.shape)} and "
                         f"targets {list(transfer.targets.shape)}; expected [n, "
                         f"{', '.join(map(str, dataset.image_shape))}] and [n, {dataset.num_classes}]")
    settings = [dataclasses.asdict(f) if dataclasses.is_dataclass(f) else f
                for f in method.fingerprint(config)]
    report.update(labelled_set=path, num_shots=transfer.count("real"), method_settings=settings,
                  num_mixup=transfer.count("mixup"), num_cvae=transfer.count("cvae"),
                  transfer_set_sources={s: transfer.count(s) for s in transfer.source_names},
                  grids=write_grids(transfer, config.workdir))
    write_tensorboard_grids(transfer, os.path.join(tensorboard_root(config), "synthesis"))
    return transfer


def train_student(config: DistillConfig, method: methods.Method, dataset: data_lib.Dataset,
                  transfer: methods.TransferSet, transfer_fp: str, strategy, timer: StageTimer,
                  report: Report) -> keras.Model:
    """Trains the student on the transfer set (fingerprint ``transfer_fp``), resuming from the work
    dir's backup; returns the logits model."""
    student_config = method.student_config(config)
    global_batch = student_config.batch_size * strategy.num_replicas_in_sync
    length = distill.training_length(student_config, len(transfer.images), global_batch)
    tensorboard_dir = tensorboard_root(config)
    callbacks = [keras.callbacks.TensorBoard(os.path.join(tensorboard_dir, "student"))]
    if dataset.x_val is not None:  # Monitoring reads the validation split, never the test split.
        callbacks.append(distill.ValidationAccuracy(
            dataset.x_val, dataset.y_val, os.path.join(tensorboard_dir, "student", "validation"),
            every=length.epochs // 50))  # At most about 50 measurements a run.
    backup = workdir_lib.artifact_path(config.outputs.checkpoint_dir or config.workdir,
                                       "student_backup", "", transfer_fp,
                                       student_config, config.seed)
    with timer("student_training"):
        student, history = distill.train_student(
            transfer.images, transfer.targets, student_config, config.seed, backup_dir=backup,
            strategy=strategy, verbose=config.verbose, callbacks=callbacks)
    losses = history.get("loss", [])
    agreement = history.get("teacher_agreement", [])
    report.update(
        student_training_agreement=float(agreement[-1]) if agreement else None,
        student_batchnorm_layers=(len(distill.batchnorm_layers(student))
                                  if student_config.batchnorm_images else 0),
        strategy=("multi_worker" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                  else "mirrored"),
        replicas=strategy.num_replicas_in_sync, student_architecture=student_config.architecture,
        student_loss=student_config.loss, student_recipe=dataclasses.asdict(student_config),
        student_epochs=length.epochs,
        student_steps_per_epoch=length.steps_per_epoch, student_steps=length.steps,
        student_epochs_resumed_from=length.epochs - len(losses),
        student_final_loss=float(losses[-1]) if losses else None)
    return student


def export_student(config: DistillConfig, student: keras.Model, warmup_images: np.ndarray,
                   teacher_base: str | None, class_names: tuple[str, ...], timer: StageTimer,
                   report: Report) -> dict[str, str]:
    """Exports the student and its compressed variants (TF Serving layout, warmup requests,
    ``serving_default`` and ``classify`` with ``class_names`` as its label vocabulary) and writes
    the serving configs. Returns variant -> version directory."""
    export_root = os.path.join(config.workdir, "export")
    broken = [w.path for w in student.weights if not np.all(np.isfinite(w.numpy()))]
    if broken:  # Never a new version, never a canary: a NaN student answers class 0 for all.
        raise distill.StudentError(
            f"the student's weights are not finite ({len(broken)} variables, e.g. {broken[0]}): "
            "likely a training state restored from a run whose loss diverged; nothing was "
            f"exported (remove the student_backup-* directory of {config.workdir} to train again)")
    with timer("export"):
        variant_dirs = {"float32": export.export_classifier(
            student, os.path.join(export_root, "student"), warmup_images=warmup_images,
            class_names=class_names)}
        for variant in config.compress:
            variant_dirs[variant] = export.export_classifier(
                student, os.path.join(export_root, f"student_{variant}"),
                warmup_images=warmup_images, variant=variant, class_names=class_names)
    student_dir = variant_dirs["float32"]
    version = int(os.path.basename(student_dir))
    report.student_export_dir = fs.abspath(student_dir)
    report.serving_configs = serving.config.write_serving_configs(
        os.path.join(config.workdir, "serving"), teacher_base, os.path.dirname(student_dir),
        stable=max(1, version - 1), canary=version)
    return variant_dirs


def evaluate_teacher(config: DistillConfig, link: TeacherLink, x_eval: np.ndarray,
                     y_eval: np.ndarray | None, timer: StageTimer,
                     report: Report) -> np.ndarray | None:
    """The teacher's test accuracy over gRPC (queries charged under ``evaluate_teacher``; none for
    unlabeled images). Returns its top-1 int64 [n] on ``x_eval`` (for the students' fidelity), or
    None when the teacher is not evaluated."""
    if link.eval_client is None or not len(x_eval):
        return None
    with timer("evaluate_teacher"):
        answers = link.eval_client.soft_labels(x_eval, progress=config.verbose == 1,
                                               stage="evaluate_teacher")
    top1 = answers.argmax(axis=1)
    report.update(teacher_accuracy=None if y_eval is None else float(np.mean(top1 == y_eval)),
                  teacher_eval_queries=link.eval_client.queries)
    return top1


def query_figures(link: TeacherLink) -> dict:
    """The report's query figures (see README, "What is counted") for this process's clients."""
    clients = [c for c in (link.client, link.eval_client) if c is not None]
    account = link.account
    return {
        "teacher_queries_sent": account.sent, "teacher_queries": account.sent,
        "teacher_queries_sent_by_stage": dict(account.sent_by_stage),
        "teacher_queries_total": account.total,
        "teacher_queries_by_stage": dict(account.by_stage),
        "teacher_queries_retried_total": account.retried,
        "teacher_ledger_hits": sum(c.ledger_hits for c in clients),
        "teacher_requests": sum(c.requests for c in clients),
        "teacher_retries": sum(c.retries for c in clients),
        "teacher_ledger_size": len(link.ledger), "query_budget": account.budget,
    }


AGREEMENT_IMAGES = 2000
"""Transfer-set images (a seeded draw) the served student's agreement with the teacher is
measured on (:func:`check_served_agreement`)."""


def agreement_sample(transfer: methods.TransferSet, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to :data:`AGREEMENT_IMAGES` transfer-set images float32 [m, H, W, C] and the teacher's
    top-1 on them int64 [m] (no query: the stored answers)."""
    n = len(transfer.images)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, AGREEMENT_IMAGES), replace=False))
    return transfer.images[rows], transfer.targets[rows].argmax(axis=1)


def measure_variant(target: str, name: str, version_dir: str, images: np.ndarray,
                    x_eval: np.ndarray, y_eval: np.ndarray | None, teacher_top1: np.ndarray | None,
                    dataset: data_lib.Dataset, progress: bool,
                    agreement: tuple[np.ndarray, np.ndarray]) -> dict:
    """One served student variant's figures over gRPC: test accuracy (labelled images), fidelity
    (agreement with ``teacher_top1``), agreement with the teacher's stored answers on
    ``agreement`` (images, top-1: :func:`agreement_sample`), validation accuracy; size,
    parameters, in-process CPU latency."""
    with client_lib.connect(target, name, role="student",
                            version=int(os.path.basename(version_dir))) as student:
        top1 = client_lib.top1(student, x_eval, progress) if len(x_eval) else None
        return {
            "served_agreement": float(np.mean(client_lib.top1(student, agreement[0]) ==
                                              agreement[1])),
            "accuracy": (None if top1 is None or y_eval is None
                         else float(np.mean(top1 == y_eval))),
            "fidelity": (None if top1 is None or teacher_top1 is None
                         else float(np.mean(top1 == teacher_top1))),
            "validation_accuracy": (None if dataset.x_val is None else client_lib.accuracy(
                student, dataset.x_val, dataset.y_val)),
            "export_dir": fs.abspath(version_dir),
            "parameters": export.saved_model_parameters(version_dir),
            "saved_model_bytes": export.saved_model_bytes(version_dir),
            "cpu_latency_ms": cpu_latency_ms(version_dir, images),
        }


def evaluate_students(config: DistillConfig, dataset: data_lib.Dataset,
                      variant_dirs: dict[str, str], transfer: methods.TransferSet,
                      x_eval: np.ndarray, y_eval: np.ndarray | None,
                      teacher_top1: np.ndarray | None, timer: StageTimer, report: Report) -> None:
    """Serves every exported variant and measures it over gRPC (:func:`measure_variant`; latency
    on the transfer set's first images, agreement on :func:`agreement_sample`)."""
    names = {v: "student" if v == "float32" else f"student_{v}" for v in variant_dirs}
    agreement = agreement_sample(transfer, config.seed)
    with timer("evaluate_student"):
        with serve({names[v]: os.path.dirname(d) for v, d in variant_dirs.items()}) as target:
            variants = {v: measure_variant(target, names[v], d, transfer.images[:64], x_eval,
                                           y_eval, teacher_top1, dataset, config.verbose == 1,
                                           agreement)
                        for v, d in variant_dirs.items()}
    base = variants["float32"]
    for figures in variants.values():
        figures["accuracy_change"] = (None if figures["accuracy"] is None else
                                      round(figures["accuracy"] - base["accuracy"], 4))
        figures["bytes_ratio"] = round(figures["saved_model_bytes"] / base["saved_model_bytes"], 3)
    report.update(student_accuracy=base["accuracy"], student_fidelity=base["fidelity"],
                  student_validation_accuracy=base["validation_accuracy"],
                  student_served_agreement=base["served_agreement"], student_variants=variants)


SERVED_AGREEMENT_FLOOR = 0.5
"""A run fails when its served float32 student agrees with the teacher on transfer-set images less
than this fraction of its training agreement. A sound export loses little (inference normalizes
and regularizes less than training: the served figure is usually the higher); a broken one
(BatchNorm statistics left at their initial values, weights lost) falls to about chance
(0.1-0.2 of training agreement in the cases seen). Half leaves room for the first and none for
the second."""

CHECKED_ABOVE_CHANCE = 0.3
"""The check applies only to a student whose training agreement exceeds chance (1/K) by at least
this much (40% for 10 classes): below it, an undertrained student (a few steps of a test run) and a
broken export cannot be told apart, and the check records ``passed: null``."""


def check_served_agreement(config: DistillConfig, variant_dirs: dict[str, str], num_classes: int,
                           report: Report) -> None:
    """Fails the run, after recording both figures in ``report.json``, when the exported student
    agrees with the teacher far below what it did in training (:data:`SERVED_AGREEMENT_FLOOR`;
    for a student that learnt something, :data:`CHECKED_ABOVE_CHANCE`).

    Both figures are on transfer-set images, the same distribution, so the check isolates what
    exporting and inference change; held-out fidelity (``student_fidelity``) is recorded beside
    it but not checked, since for zero-shot methods (synthetic transfer sets) it is legitimately
    far below training agreement. On failure the exported versions are set aside
    (``<version>.rejected``: TF Serving loads only numeric directories), so that no server or
    ``tfkd-deploy`` picks them up.

    Raises:
      tfkd.distill.StudentError: one line with both figures and the likely causes.
    """
    trained, served = report.student_training_agreement, report.student_served_agreement
    measurable = (trained is not None and served is not None
                  and trained - 1 / num_classes >= CHECKED_ABOVE_CHANCE)
    passed = served >= SERVED_AGREEMENT_FLOOR * trained if measurable else None
    report.student_check = {"training_agreement": trained, "served_agreement": served,
                            "held_out_fidelity": report.student_fidelity,
                            "floor": SERVED_AGREEMENT_FLOOR, "passed": passed}
    if passed is not False:
        return
    rejected = [fs.reject_version(d) for d in variant_dirs.values()]
    report.student_check["rejected_exports"] = rejected
    report.write(os.path.join(config.workdir, "report.json"))
    raise distill.StudentError(
        f"the exported student agrees with the teacher on {served:.1%} of transfer-set images, "
        f"against {trained:.1%} in training (below {SERVED_AGREEMENT_FLOOR:g}x): likely "
        "BatchNormalization statistics that do not match the trained weights (student."
        "batchnorm_images=0, or a custom layer that keeps its own), a student whose training and "
        "inference paths differ, or a broken export; the export was set aside as "
        f"{', '.join(rejected)}")


def finish(config: DistillConfig, student: keras.Model, variant_dirs: dict[str, str],
           teacher_base: str | None, timer: StageTimer, report: Report) -> Report:
    """Sizes of both models, seconds per stage, the model card (:mod:`tfkd.model_card`, in
    ``export/``); writes ``report.json``."""
    report.student_parameters = models.count_parameters(student)
    report.student_saved_model_bytes = export.saved_model_bytes(variant_dirs["float32"])
    teacher_dir = export.latest_version_dir(teacher_base) if teacher_base else None
    if teacher_dir:  # A remote black box's size is not ours to know.
        report.teacher_parameters = export.saved_model_parameters(teacher_dir)
        report.teacher_saved_model_bytes = export.saved_model_bytes(teacher_dir)
    report.update(stage_seconds=timer.seconds,
                  total_seconds=round(sum(timer.seconds.values()), 2))
    report.model_card = model_card.write(report.to_dict(), os.path.join(config.workdir, "export"))
    report.output_dirs = config.outputs.to_dict() or None
    if config.outputs.model_dir:
        copy_to_model_dir(config.outputs.model_dir, variant_dirs, report.model_card)
    report.write(os.path.join(config.workdir, "report.json"))
    return report


def write_grids(transfer: methods.TransferSet, workdir: str) -> dict[str, str]:
    """PNG grids (one row per teacher class) of the transfer set's images, one per source."""
    paths = {}
    classes = transfer.targets.argmax(axis=1)
    for i, name in enumerate(transfer.source_names):
        mask = transfer.source == i
        grid = viz.image_grid(transfer.images[mask], classes[mask], transfer.targets.shape[1])
        paths[name] = viz.write_png(os.path.join(workdir, f"grid_{name}.png"), grid)
    return paths


def tensorboard_root(config: DistillConfig) -> str:
    """Where the run's TensorBoard events go: ``outputs.tensorboard_dir``, else
    ``<workdir>/tensorboard``."""
    return config.outputs.tensorboard_dir or os.path.join(config.workdir, "tensorboard")


def copy_to_model_dir(model_dir: str, variant_dirs: dict[str, str], card: dict[str, str]) -> None:
    """Copies the float32 student (a plain SavedModel at ``model_dir``'s root), its compressed
    variants (``variants/<variant>/``) and its model card into ``model_dir`` (Vertex AI's
    ``AIP_MODEL_DIR``; any ``tf.io.gfile`` file system)."""
    for variant, version_dir in variant_dirs.items():
        fs.copy_tree(version_dir, model_dir if variant == "float32"
                     else os.path.join(model_dir, "variants", variant))
    for path in card.values():
        fs.write_atomic(os.path.join(model_dir, os.path.basename(path)), fs.read_bytes(path))


def write_tensorboard_grids(transfer: methods.TransferSet, log_dir: str) -> None:
    """TensorBoard image summaries of the per-source grids (one row per teacher class)."""
    classes = transfer.targets.argmax(axis=1)
    with tf.summary.create_file_writer(log_dir).as_default():
        for i, name in enumerate(transfer.source_names):
            mask = transfer.source == i
            grid = viz.image_grid(transfer.images[mask], classes[mask], transfer.targets.shape[1])
            tf.summary.image(name, grid[None], step=0)


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
