"""The stage runner: data -> teacher -> transfer set -> student -> export -> evaluation -> report.

:func:`run` is what ``tfkd.distill`` and ``launch/distill.py`` call. Its stages, each a short
function that reads what it needs and returns what it made: :func:`load_data` (or
:func:`load_images`), :func:`tfkd.teacher_setup.connect_teacher` (a remote teacher over gRPC or
REST, or one trained into the work dir and served on a loopback port), :func:`build_transfer_set`
(the method, a plug-in of :mod:`tfkd.methods`, with its query plan checked against the budget
first), :func:`train_student`, :func:`tfkd.outputs.export_student`,
:func:`tfkd.teacher_setup.evaluate_teacher`, :func:`tfkd.evaluation.evaluate_students` (served
over gRPC) with :func:`tfkd.evaluation.check_served_agreement`, and :func:`tfkd.outputs.finish`
(the :class:`tfkd.report.Report`). The run's settings are :class:`tfkd.config.DistillConfig`. Every artifact
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
    <state>-<fp>.*               a method's own persisted state (cvae-, active_rounds-,
                                 boundary_state-, zsdb3kd_samples-, impressions-...:
                                 tfkd.workdir.ARTIFACTS)
    transfer_set-<fp>.npz        the transfer set: images, targets, sources (persisted once)
    grid_<source>.png            transfer-set images per teacher class, per source
    student_backup-<fp>/         Keras BackupAndRestore state: a rerun resumes training
    tensorboard/                 student losses, learning rate, validation accuracy; image grids
    export/student/<version>/    the student SavedModel, TF Serving layout (student_<variant>/ too;
                                 student_int8/ holds a LiteRT model.tflite)
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

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfkd import data as data_lib
from tfkd import distribute
from tfkd import errors
from tfkd import evaluation
from tfkd import fs
from tfkd import images as images_lib
from tfkd import methods
from tfkd import outputs
from tfkd import student as student_lib
from tfkd import teacher as teacher_lib
from tfkd import teacher_setup
from tfkd import workdir as workdir_lib
from tfkd.config import DistillConfig
from tfkd.config import TeacherTrainConfig  # noqa: F401  (re-exported: tfkd.pipeline.TeacherTrainConfig)
from tfkd.report import Report
from tfkd.report import StageTimer


def run(config: DistillConfig, strategy: tf.distribute.Strategy | None = None,
        flags: dict | None = None) -> Report:
    """Runs a distillation end to end with the work dir locked, and writes ``report.json``.

    ``flags`` (a launcher's flag values, name -> value) are written to ``<workdir>/flags.json``
    once the lock is held: a run refused because another holds the work dir leaves that run's
    record as it was.

    ``strategy`` (default: :func:`tfkd.distribute.make_strategy`, mirrored) trains the student. Under
    MultiWorkerMirroredStrategy every worker runs this with its own work dir: each asks the teacher
    about its shard of every image set and all get every answer (:mod:`tfkd.teacher.cluster`), all train in
    step, and only the chief exports, evaluates and writes the full report (a worker's report has
    ``role: worker``).

    Returns:
      the :class:`tfkd.report.Report`.

    Raises:
      tfkd.errors.ConfigError: a setting out of range (before anything is read or sent), or one
        only the data, the images or the teacher can refuse (e.g. N not a multiple of the classes).
      tfkd.workdir.WorkdirError: the work dir (or an output dir) cannot be written, another run
        holds the work dir, or its teacher was trained with other settings.
      tfkd.errors.DatasetUnavailableError, tfkd.errors.TeacherError (QueryBudgetExceeded included).
    """
    config.validate()
    config = config.resolved()
    method = methods.get(config.method)
    workdir_lib.check_usable(config.workdir)
    for name, directory in config.outputs.to_dict().items():  # Vertex AI's AIP_* directories.
        workdir_lib.check_usable(directory, f"outputs.{name}")
    with workdir_lib.lock(config.workdir):
        if flags is not None:
            workdir_lib.write_json(os.path.join(config.workdir, "flags.json"), flags)
        return _run(config, method, strategy or distribute.make_strategy())


def _run(config: DistillConfig, method: methods.Method, strategy) -> Report:
    timer = StageTimer()
    report = Report(method=config.method, dataset=config.dataset, seed=config.seed,
                    code_commit=outputs.code_commit(),
                    method_config=(dataclasses.asdict(config.method_config)
                                   if dataclasses.is_dataclass(config.method_config) else None),
                    # Every artifact this run may read back, validated; damaged ones set aside.
                    damaged_artifacts=workdir_lib.check(config.workdir))
    with contextlib.ExitStack() as stack:
        if config.images is None:
            dataset = load_data(config, timer)
            link = teacher_setup.connect_teacher(config, method, dataset, strategy, stack, timer,
                                                 report)
        else:  # The images are read at the teacher's input size: the teacher comes first.
            link = teacher_setup.connect_teacher(config, method, None, strategy, stack, timer,
                                                 report)
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
        if not distribute.is_chief(strategy):
            report.update(role="worker", stage_seconds=timer.seconds,
                          **teacher_setup.query_figures(link))
            report.write(os.path.join(config.workdir, "report.json"))
            return report
        report.role = "chief"
        variant_dirs = outputs.export_student(config, student, transfer.images,
                                              link.local_base, dataset.class_names, timer, report)
        teacher_top1 = teacher_setup.evaluate_teacher(config, link, x_eval, y_eval, timer, report)
        report.update(**teacher_setup.query_figures(link))
    evaluation.evaluate_students(config, dataset, variant_dirs, transfer, x_eval, y_eval,
                                 teacher_top1, timer, report)
    evaluation.check_served_agreement(config, variant_dirs, dataset.num_classes, report)
    return outputs.finish(config, student, variant_dirs, link.local_base, timer, report)


def load_data(config: DistillConfig, timer: StageTimer) -> data_lib.Dataset:
    """The dataset with its validation split held out (:func:`tfkd.data.with_validation_split`)."""
    with timer("load_data"):
        return data_lib.with_validation_split(
            data_lib.load_dataset(config.dataset, config.data_dir), config.num_validation)


def load_images(config: DistillConfig, link: teacher_setup.TeacherLink, timer: StageTimer,
                report: Report) -> data_lib.Dataset:
    """The user's images as a :class:`tfkd.data.Dataset`: ``num_shots`` of ``config.images.path``
    (seeded uniform draw; all for 0) as ``x_train`` without labels, the evaluation images as
    ``x_test`` (labels from class sub-folders, else None). The files drawn are recorded in
    ``few_shot_files.txt``.

    Raises:
      tfkd.errors.ImageSourceError: no image, more shots asked than there are, or labels that
        cannot be read; tfkd.errors.ConfigError: an image size the teacher does not give.
    """
    source = config.images
    shape = source.image_shape(link.client.signature.input_shape)
    num_classes = link.client.num_data_classes
    def draw(pool: int) -> np.ndarray | None:
        if config.num_shots > pool:
            raise errors.ImageSourceError(
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


def artifact_store(config: DistillConfig, link: teacher_setup.TeacherLink) -> workdir_lib.ArtifactStore:
    """The run's :class:`tfkd.workdir.ArtifactStore`: every artifact's name holds the data (dataset
    or image source), the seed, N and the teacher's identity and view."""
    return workdir_lib.ArtifactStore(config.workdir, (
        config.dataset, config.data_dir, config.seed, config.num_shots,
        link.client.signature.identity, link.client.label_only,
        *(() if config.images is None else (config.images,))))


def transfer_key(config: DistillConfig, method: methods.Method, link: teacher_setup.TeacherLink) -> tuple:
    """What a transfer set depends on: the run's inputs, the method and its settings."""
    return (*artifact_store(config, link).inputs, method.name, method.fingerprint(config))


def fit_query_budget(config: DistillConfig, method: methods.Method, dataset: data_lib.Dataset,
                     link: teacher_setup.TeacherLink, num_eval: int, strategy,
                     report: Report) -> DistillConfig:
    """The run's config with the method's plan cut to the query budget (its
    :meth:`~tfkd.methods.Method.budget_plan`): what the budget leaves after the teacher's
    evaluation (``num_eval`` images when the teacher is evaluated) and the N real images goes to
    synthetic images, each image costing the plan's ``queries_per_image``. The student keeps the
    training length (optimizer steps) the full plan would have had, unless ``student.steps`` is
    set. The config is unchanged without a budget, or when the plan fits.

    Raises:
      tfkd.teacher.QueryBudgetExceeded: the teacher's evaluation and the real images alone take
        the budget (nothing was sent).
    """
    budget = config.teacher.query_budget
    if budget is None or method.teacher_needs == "none":
        return config
    reserved = num_eval if link.eval_client is not None else 0
    plan = method.budget_plan(config, link.labeller)
    num_real = (0 if not plan.labels_real_images else config.num_shots
                if dataset.y_train is not None else len(dataset.x_train))
    per_image = plan.queries_per_image  # Votes: 1 + k.
    if reserved and budget - reserved < num_real * per_image:
        raise teacher_lib.QueryBudgetExceeded(
            f"teacher.query_budget={budget}: the teacher's evaluation takes {reserved} of it "
            f"(its test accuracy over {reserved} test images) and the {num_real} real images "
            f"{num_real * per_image}, which leaves nothing to distil with; set "
            "evaluate_teacher=False (the budget then buys the student only) or fewer "
            "eval_examples, or raise the budget; nothing was sent")
    if plan.fit is None:
        return config
    fitted, summary = plan.fit((budget - reserved) // per_image, num_real)
    if fitted == config:
        return config
    student, wanted = config.student, plan.synthetic_images
    if student.steps == 0:  # The full plan's steps: its epochs over N + the synthetic images asked.
        global_batch = student.batch_size * strategy.num_replicas_in_sync
        steps = student.epochs * ((num_real + wanted) // global_batch)
        fitted = dataclasses.replace(fitted, student=dataclasses.replace(student, steps=steps))
    report.query_plan_fitted = {
        "budget": budget, "reserved": reserved, "num_real": num_real, "wanted": wanted,
        **summary, "student_steps": fitted.student.steps}
    logging.warning("Query budget %d: the plan is cut to %s (%d synthetic images asked for) "
                    "beside %d real images and %d for the teacher's evaluation; the student keeps "
                    "%d training steps", budget, summary, wanted, num_real,
                    reserved, fitted.student.steps)
    return fitted


def plan_queries(method: methods.Method, ctx: methods.MethodContext, link: teacher_setup.TeacherLink,
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


def build_transfer_set(config: DistillConfig, method: methods.Method, dataset: data_lib.Dataset,
                       link: teacher_setup.TeacherLink, x_eval: np.ndarray, timer: StageTimer,
                       report: Report, strategy=None) -> methods.TransferSet:
    """The method's transfer set, built once and persisted (reused by fingerprint after).

    Raises:
      tfkd.errors.ConfigError: the method built a set of the wrong image shape or class count.
      tfkd.teacher.QueryBudgetExceeded, tfkd.teacher.TeacherError.
    """
    shots, labels = few_shot(config, dataset)
    ctx = methods.MethodContext(
        config, shots, dataset.num_classes,
        teacher=None if method.teacher_needs == "none" else link.labeller,
        few_shot_labels=labels if method.reads_true_labels else None, stage=timer,
        strategy=strategy, artifacts=artifact_store(config, link),
        method_report=method.report_class() if method.report_class else None,
        teacher_saved_model=(teacher_setup.saved_model_dir(config.teacher_saved_model or link.local_base)
                             if method.teacher_needs == "weights" else None))
    path = None  # A set that asked no teacher cost nothing to keep.
    if method.teacher_needs != "none":
        path = ctx.artifacts.path("transfer_set", ".npz", method.name, method.fingerprint(config))
    report.teacher_query_plan = plan_queries(method, ctx, link, x_eval,
                                             reuse=path is not None and fs.exists(path))
    if path is None:
        transfer = method.build(ctx)
    else:
        transfer, _ = workdir_lib.reuse_or_build(path, lambda: method.build(ctx),
                                                 lambda t, p: t.save(p), methods.TransferSet.load,
                                                 "Transfer set")
    if ctx.method_report is not None:
        report.method_report = {"method": method.name, **dataclasses.asdict(ctx.method_report)}
    expected = (dataset.image_shape, dataset.num_classes)
    if (transfer.images.shape[1:], transfer.targets.shape[1]) != expected:
        raise errors.ConfigError(f"method={method.name!r}: built images "
                                 f"{list(transfer.images.shape)} and targets "
                                 f"{list(transfer.targets.shape)}; expected [n, "
                                 f"{', '.join(map(str, dataset.image_shape))}] and "
                                 f"[n, {dataset.num_classes}]")
    settings = [dataclasses.asdict(f) if dataclasses.is_dataclass(f) else f
                for f in method.fingerprint(config)]
    report.update(labelled_set=path, num_shots=transfer.count("real"), method_settings=settings,
                  transfer_set_sources={s: transfer.count(s) for s in transfer.source_names},
                  grids=outputs.write_grids(transfer, config.workdir))
    outputs.write_tensorboard_grids(transfer, os.path.join(outputs.tensorboard_root(config), "synthesis"))
    return transfer


SELECTION_HOLDOUT = (0.1, 5000)
"""With ``student.select='validation'`` and no validation split: the fraction of the transfer set
held out of training to select on, and its most images."""


def selection_split(student_config: student_lib.StudentConfig, dataset: data_lib.Dataset,
                    transfer: methods.TransferSet, seed: int):
    """What the student selects its epoch on: ``(train images, train targets, selection images,
    selection labels int [m], what it is)``; selection images and labels None for ``final``.

    The validation split (real labelled images, held out of the teacher's training and the few
    shots); with none (the user's own images), a held-out slice of the transfer set
    (:data:`SELECTION_HOLDOUT`, drawn by ``seed``) labelled with the teacher's top-1 answer and
    left out of training. Never the test split.
    """
    images, targets = transfer.images, transfer.targets
    if student_config.select != "validation":
        return images, targets, None, None, "final epoch"
    if dataset.x_val is not None:
        return images, targets, dataset.x_val, dataset.y_val, "validation split"
    fraction, most = SELECTION_HOLDOUT
    m = min(most, int(len(images) * fraction))
    if m < 1:
        raise errors.ConfigError(f"student.select='validation': no validation split and a "
                                 f"transfer set of {len(images)} images, too few to hold out a "
                                 "slice")
    order = np.random.default_rng([seed, 7]).permutation(len(images))
    held, kept = np.sort(order[:m]), np.sort(order[m:])
    return (images[kept], targets[kept], images[held], targets[held].argmax(axis=1),
            "held-out transfer set (teacher's top-1)")


def train_student(config: DistillConfig, method: methods.Method, dataset: data_lib.Dataset,
                  transfer: methods.TransferSet, transfer_fp: str, strategy, timer: StageTimer,
                  report: Report) -> keras.Model:
    """Trains the student on the transfer set (fingerprint ``transfer_fp``), resuming from the work
    dir's backup, selecting its epoch as ``student.select`` says (:func:`selection_split`);
    returns the logits model."""
    student_config, loss = method.student_config(config), method.make_loss(config)
    images, targets, x_sel, y_sel, selection = selection_split(student_config, dataset, transfer,
                                                               config.seed)
    global_batch = student_config.batch_size * strategy.num_replicas_in_sync
    length = student_lib.training_length(student_config, len(images), global_batch)
    tensorboard_dir = outputs.tensorboard_root(config)
    callbacks = [keras.callbacks.TensorBoard(os.path.join(tensorboard_dir, "student"))]
    monitor = (x_sel, y_sel) if x_sel is not None else (dataset.x_val, dataset.y_val)
    if monitor[0] is not None:  # Monitoring and selection never read the test split.
        callbacks.append(student_lib.ValidationAccuracy(
            *monitor, os.path.join(tensorboard_dir, "student", "validation"),
            every=1 if x_sel is not None else length.epochs // 50))  # Else about 50 a run.
    backup = workdir_lib.artifact_path(config.outputs.checkpoint_dir or config.workdir,
                                       "student_backup", "", transfer_fp,
                                       student_config, config.seed)
    keep_best = (student_lib.KeepBest(os.path.join(backup, "selected_weights.npz"))
                 if x_sel is not None else None)
    with timer("student_training"):
        student, history = student_lib.train_student(
            images, targets, student_config, config.seed, backup_dir=backup,
            strategy=strategy, verbose=config.verbose, callbacks=callbacks, loss=loss,
            keep_best=keep_best)
    losses = history.get("loss", [])
    agreement = history.get("teacher_agreement", [])
    report.update(
        student_selection=selection, student_selected_epoch=history.get("selected_epoch"),
        student_selection_scores=keep_best.scores if keep_best else None,
        student_training_agreement=float(agreement[-1]) if agreement else None,
        student_batchnorm_layers=(len(student_lib.batchnorm_layers(student))
                                  if student_config.batchnorm_images else 0),
        strategy=("multi_worker" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                  else "mirrored"),
        replicas=strategy.num_replicas_in_sync, student_architecture=student_config.architecture,
        student_loss=(student_config.loss if loss is None
                      else f"{method.name}:{type(loss()).__name__}"),
        student_recipe=dataclasses.asdict(student_config),
        student_epochs=length.epochs, student_global_batch=global_batch,
        student_learning_rate=student_lib.scaled_learning_rate(student_config,
                                                            strategy.num_replicas_in_sync),
        student_steps_per_epoch=length.steps_per_epoch, student_steps=length.steps,
        student_epochs_resumed_from=length.epochs - len(losses),
        student_final_loss=float(losses[-1]) if losses else None)
    return student
