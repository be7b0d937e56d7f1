"""The teacher stage of a run: a teacher trained into the work dir and served on a loopback port
(when none is given), the connection with the work dir's ledger and query account
(:class:`TeacherLink`), and the teacher's own evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import keras
import numpy as np
from absl import logging

from tfkd import data as data_lib
from tfkd import distribute
from tfkd import errors
from tfkd import export
from tfkd import fs
from tfkd import images as images_lib
from tfkd import methods
from tfkd import serving
from tfkd import student as student_lib
from tfkd import teacher as teacher_lib
from tfkd import workdir as workdir_lib
from tfkd.config import DistillConfig
from tfkd.config import TeacherTrainConfig
from tfkd.report import Report
from tfkd.report import StageTimer
from tfkd.student import models
from tfkd.teacher import cluster


@dataclasses.dataclass
class TeacherLink:
    """The connected teacher of a run.

    Attributes:
      client: the :class:`tfkd.teacher.TeacherClient` methods label with (label-only view if asked).
      labeller: ``client`` as this worker of the cluster asks it
        (:class:`tfkd.teacher.cluster.ShardedTeacher`).
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
    if config.architecture == "auto":
        raise ValueError(  # Programming error: TeacherTrainConfig.resolved(dataset) names it.
            "teacher_train.architecture='auto' unresolved; expected an architecture "
            "(TeacherTrainConfig.resolved or DistillConfig.resolved)")
    keras.utils.set_random_seed(seed)
    model = models.build_model(config.architecture, dataset.image_shape, dataset.num_classes)
    steps = config.epochs * -(-len(dataset.x_train) // config.batch_size)
    lr = student_lib.learning_rate(config.learning_rate, config.lr_schedule, steps)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.fit(dataset.x_train, dataset.y_train, batch_size=config.batch_size, epochs=config.epochs,
              verbose=verbose, shuffle=True)

    def accuracy(x, y):
        return float(model.evaluate(x, y, batch_size=1024, verbose=0)[1])

    test = accuracy(dataset.x_test, dataset.y_test) if evaluate_test else None
    validation = None if dataset.x_val is None else accuracy(dataset.x_val, dataset.y_val)
    export_dir = export.export_classifier(model, export_base, outputs=export.TEACHER_OUTPUTS,
                                         warmup_images=dataset.x_train[:8])
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
    if config.evaluate_teacher and config.evaluate_test and distribute.is_chief(strategy):
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
      tfkd.errors.ImageSourceError: neither says.
    """
    if client.class_map is not None:
        return max(client.class_map) + 1
    if client.signature.num_classes:
        return client.signature.num_classes
    if config.images.class_names:
        return len(images_lib.read_class_names(config.images.class_names))
    raise errors.ImageSourceError(f"images={config.images.path!r}: the teacher's metadata does not "
                                  "say how many classes it has (class ids output); set "
                                  "images.class_names (a file, one name per line)")


def saved_model_dir(path: str) -> str:
    """A SavedModel version directory: ``path`` itself if it holds ``saved_model.pb``, else the
    newest numeric version under it (a TF Serving base path).

    Raises:
      tfkd.errors.ConfigError: neither (a missing or empty directory included).
    """
    if fs.exists(os.path.join(path, "saved_model.pb")):
        return path
    newest = export.latest_version_dir(path)
    if newest is None:
        raise errors.ConfigError(f"teacher_saved_model={path!r}: expected a SavedModel directory "
                                 "(saved_model.pb) or a base path of numeric versions; found "
                                 f"{'no such directory' if not fs.isdir(path) else 'neither'}")
    return newest


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
