"""The report of a run: one typed record, written to ``<workdir>/report.json``.

:class:`Report`'s fields are the keys of ``report.json``, a public contract read by users' scripts:
each is documented here and only here. Accuracies are fractions in [0, 1]; sizes in bytes; times in
seconds. A field a run did not measure is null (a non-chief worker of a cluster fills only the
identity, training and query fields).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

from absl import logging

from tfkd import workdir as workdir_lib


@dataclasses.dataclass
class Report:
    """Figures of one :func:`tfkd.pipeline.run`. Read like the JSON: ``report["student_accuracy"]``."""

    # ---- what ran
    method: str = ""
    """The method's registry name (:func:`tfkd.methods.names`)."""
    dataset: str = ""
    """The dataset name (:data:`tfkd.data.SUPPORTED_DATASETS`)."""
    seed: int = 0
    """The one seed of sampling, synthesis and training."""
    code_commit: str | None = None
    """The git commit of the tfkd checkout that ran (``+dirty`` with local changes), or null."""
    role: str | None = None
    """``chief`` (exports, evaluates, writes the full report) or ``worker`` (a non-chief worker)."""
    strategy: str | None = None
    """``mirrored`` or ``multi_worker``."""
    replicas: int | None = None
    """Replicas training the student in sync (over every worker)."""
    damaged_artifacts: list = dataclasses.field(default_factory=list)
    """Work-dir artifacts found damaged and set aside (path, what, error, moved_to)."""

    # ---- data and transfer set
    num_validation: int | None = None
    """Training images held out as the validation split (0: none)."""
    num_shots: int | None = None
    """N: the few real images in the transfer set."""
    transfer_set_sources: dict = dataclasses.field(default_factory=dict)
    """Images in the transfer set by source name (``real``, ``mixup``, ``cvae``, a method's own)."""
    method_settings: list = dataclasses.field(default_factory=list)
    """The method's settings its transfer set depends on (:meth:`tfkd.methods.Method.fingerprint`,
    dataclasses as dicts): e.g. ``zskd``'s impression count, steps and T."""
    method_config: dict | None = None
    """The method's own settings as the run used them (its
    :attr:`tfkd.methods.Method.config_class`, resolved: ``auto`` given its value); null for a
    method without."""
    method_report: dict | None = None
    """The method's own report fields (its :attr:`tfkd.methods.Method.report_class`, as a dict,
    with ``method``: its name); null for a method without one."""
    labelled_set: str | None = None
    """Path of the persisted transfer set (``transfer_set-<fp>.npz``); null for a method that asks
    no teacher (nothing paid to keep)."""
    grids: dict = dataclasses.field(default_factory=dict)
    """PNG grids of the transfer set's images per teacher class, by source: name -> path."""
    eval_examples: int | None = None
    """Test images the accuracies were measured on (0 when the test split was not read)."""
    images: dict | None = None
    """The user's own images (``images`` setting; null for a named dataset): ``path``, ``eval_path``,
    ``image_shape`` [H, W, C], ``pool`` (images in the source), ``skipped`` and ``eval_skipped``
    (unreadable files), ``eval_labelled`` (class sub-folders), ``class_names`` (the teacher's order
    used), ``images_per_second`` and ``eval_images_per_second`` (reading, decoding and resizing in
    tf.data)."""

    # ---- teacher
    teacher: dict | None = None
    """The teacher as read: target, model_name, version, signature, input, output, output_kind,
    label_only."""
    teacher_output_kind: str | None = None
    """``probabilities``, ``logits``, ``classes``, or ``classes (label-only view)``."""
    teacher_architecture: str | None = None
    """The architecture of a teacher tfkd trained (null for a remote teacher)."""
    teacher_recipe: dict | None = None
    """The settings that trained the local teacher (``teacher/recipe.json``)."""
    teacher_accuracy_in_process: float | None = None
    """Test accuracy of a teacher trained by this run, measured in process."""
    teacher_validation_accuracy_in_process: float | None = None
    """Validation accuracy of a teacher trained by this run, measured in process."""
    teacher_accuracy: float | None = None
    """Test accuracy of the teacher, served, over gRPC (its queries are charged and budgeted)."""
    teacher_eval_queries: int | None = None
    """Images this process sent for the teacher's evaluation."""
    teacher_parameters: int | None = None
    """Parameters of a local teacher's SavedModel (null: a remote black box)."""
    teacher_saved_model_bytes: int | None = None
    """Bytes of a local teacher's SavedModel (null: a remote black box)."""

    # ---- teacher queries (see README, "What is counted")
    teacher_query_plan: dict | None = None
    """This process's planned queries by stage, checked against the budget before any was sent (an
    upper bound: ledger answers excluded, every CVAE image included)."""
    teacher_queries_sent: int | None = None
    """Images this process sent to the teacher: every stage, every attempt (retries included)."""
    teacher_queries: int | None = None
    """Older name of ``teacher_queries_sent``."""
    teacher_queries_sent_by_stage: dict | None = None
    """``teacher_queries_sent`` by stage (``label_real``, ``evaluate_teacher``, ...)."""
    teacher_queries_total: int | None = None
    """Images sent over the work dir's whole life: every process, stage and attempt."""
    teacher_queries_by_stage: dict | None = None
    """``teacher_queries_total`` by stage."""
    teacher_queries_retried_total: int | None = None
    """Images re-sent by retries over the work dir's life."""
    teacher_ledger_hits: int | None = None
    """Images this process answered from the ledger instead of asking."""
    teacher_requests: int | None = None
    """Predict RPCs this process sent, retries included."""
    teacher_retries: int | None = None
    """Attempts after a retryable error (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED)."""
    teacher_ledger_size: int | None = None
    """Answers stored in the work dir's ledger."""
    query_budget: int | None = None
    """The cap on ``teacher_queries_total`` (null: none)."""
    query_plan_fitted: dict | None = None
    """Null unless the method's plan was cut to fit the query budget
    (:meth:`tfkd.methods.Method.budget_plan`): ``budget``, ``reserved`` (the teacher's evaluation),
    ``num_real``, ``wanted`` (the synthetic images asked for), ``student_steps`` (the training
    length the full plan would have had, kept), and the method's figures of what is left (the
    FS-BBT family: ``num_mixup``, ``num_cvae``, ``active_labelled_images``)."""

    # ---- student
    student_architecture: str | None = None
    """The student's architecture (:data:`tfkd.student.models.MODELS`)."""
    student_loss: str | None = None
    """The loss the student trained with (:data:`tfkd.student.LOSSES`)."""
    student_recipe: dict | None = None
    """Every field of the :class:`tfkd.student.StudentConfig` the student trained with (batch,
    rate, schedule, augmentation, ...)."""
    student_learning_rate: float | None = None
    """The learning rate the student trained at (its peak, under a schedule): ``learning_rate``
    scaled to the global batch by ``lr_scaling`` (:func:`tfkd.student.scaled_learning_rate`)."""
    student_global_batch: int | None = None
    """Images per optimizer step over every replica (``batch_size`` x replicas)."""
    student_epochs: int | None = None
    """Keras epochs the student trained for in all: passes over the transfer set, or chunks of its
    endless stream when the training length is set in steps (:func:`tfkd.student.training_length`)."""
    student_steps_per_epoch: int | None = None
    """Optimizer steps per Keras epoch."""
    student_steps: int | None = None
    """Optimizer steps the student trained for in all (epochs x steps per epoch)."""
    student_epochs_resumed_from: int | None = None
    """Epochs found done in the work dir when this process started (0: a fresh start)."""
    student_final_loss: float | None = None
    """The training loss of the last epoch this process ran."""
    student_selection: str | None = None
    """Which weights were exported (``student.select``): ``final epoch``, or the best epoch on the
    ``validation split`` or, with none, on a ``held-out transfer set (teacher's top-1)``. Never
    the test split."""
    student_selected_epoch: int | None = None
    """The exported epoch (1-based) when selected; null for the final epoch."""
    student_selection_scores: dict | None = None
    """Top-1 accuracy on the selection split after each epoch (epoch -> fraction in [0, 1]): the
    selected epoch's and the final epoch's are both here."""
    student_export_dir: str | None = None
    """The float32 student's SavedModel version directory."""
    student_accuracy: float | None = None
    """Test accuracy of the float32 student, served, over gRPC."""
    student_validation_accuracy: float | None = None
    """Validation accuracy of the float32 student, served, over gRPC."""
    student_fidelity: float | None = None
    """Top-1 agreement of the float32 student, served, with the teacher on the evaluation images
    (fraction in [0, 1]; no labels needed: the model-extraction measure)."""
    student_training_agreement: float | None = None
    """Top-1 agreement of the student with its targets (the teacher's answers) in the last training
    epoch, in training mode (augmented batches, batch statistics); null when no epoch ran in this
    process (training resumed whole)."""
    student_served_agreement: float | None = None
    """Top-1 agreement of the float32 student, exported and served, with the teacher's answers on up
    to 2,000 transfer-set images (inference mode, moving statistics): what training agreement
    becomes once exported. The run fails when it is below ``SERVED_AGREEMENT_FLOOR`` (0.5) x
    ``student_training_agreement``, for a student whose training agreement is at least 0.3 above
    chance (:func:`tfkd.evaluation.check_served_agreement`)."""
    student_check: dict | None = None
    """The served-agreement check: ``training_agreement``, ``served_agreement``,
    ``held_out_fidelity`` (``student_fidelity``), ``floor``, ``passed`` (null when not measurable:
    no training epoch ran in this process, or training agreement within 0.3 of chance),
    and ``rejected_exports`` (version directories set aside when it failed)."""
    student_batchnorm_layers: int | None = None
    """BatchNormalization layers of the student whose statistics were re-estimated after training
    (:func:`tfkd.student.reestimate_batchnorm`; 0: none, or ``batchnorm_images`` = 0)."""
    student_variants: dict = dataclasses.field(default_factory=dict)
    """Per variant (float32, float16, int8): accuracy, validation_accuracy, fidelity, export_dir,
    parameters, saved_model_bytes, cpu_latency_ms {batch_1, batch_64} (median in-process ms on the
    machine that ran, the variants' calls interleaved: :func:`tfkd.evaluation.cpu_latencies_ms`),
    accuracy_change and bytes_ratio
    against float32."""
    student_slower_than_float32: dict = dataclasses.field(default_factory=dict)
    """The flag of a compressed variant slower than float32 on the machine that measured it: variant
    name -> one line giving each batch size (1, 64) at which its ``cpu_latency_ms`` is above
    float32's, with both figures; empty when none is slower. Derived from ``student_variants``
    each time it is set (:func:`slower_than_float32`)."""
    student_parameters: int | None = None
    """Parameters of the student model."""
    student_saved_model_bytes: int | None = None
    """Bytes of the float32 student's SavedModel."""
    model_card: dict | None = None
    """Paths of the student's model card beside the export: ``json`` and ``markdown``
    (:mod:`tfkd.model_card`)."""
    output_dirs: dict | None = None
    """The directories written besides the work dir (:class:`tfkd.vertex.OutputDirs`: Vertex AI's
    ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR``, ``AIP_TENSORBOARD_LOG_DIR``), or null."""
    serving_configs: dict | None = None
    """Generated TF Serving configs: file kind -> path."""

    # ---- time
    stage_seconds: dict = dataclasses.field(default_factory=dict)
    """Wall-clock seconds per stage of this process."""
    total_seconds: float | None = None
    """Sum of ``stage_seconds``."""

    def __post_init__(self):
        self.student_variants = self.student_variants  # Derives student_slower_than_float32.

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "student_variants":
            super().__setattr__("student_slower_than_float32", slower_than_float32(value or {}))

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)  # Programming error: a mapping's answer to a name it lacks.
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.keys() else default

    def update(self, **fields) -> None:
        """Sets fields by name. Raises KeyError for a name that is not a field (a typo in the
        calling code)."""
        unknown = set(fields) - set(self.keys())
        if unknown:
            raise KeyError(f"not report fields: {sorted(unknown)}")  # Programming error: a typo.
        for key, value in fields.items():
            setattr(self, key, value)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path: str) -> str:
        """Writes the report as JSON atomically. Returns ``path``."""
        return workdir_lib.write_json(path, self.to_dict())


LATENCY_SPREAD = 1.2
"""How far apart medians of equally fast models land on a shared machine: the same student's
float32 at batch 64 measured 1.84 and 2.12 ms by two runs
(``benchmarks/reports/main_command_issue36/``); a float16 student 1.01x float32 at batch 1 timed
in sequence by a run, 0.82x timed interleaved (``benchmarks/reports/issue38/main_command/``). A
flag whose every excess is under it says so."""


def slower_than_float32(variants: dict) -> dict[str, str]:
    """Which compressed variants are slower than float32, in one line each.

    Args:
      variants: ``student_variants``: name -> figures whose ``cpu_latency_ms`` maps ``batch_<b>``
        to median ms (a variant without figures, or a batch size float32 was not measured at, is
        not compared).

    Returns:
      name -> one line (e.g. "int8 is slower than float32 on the CPU that measured it: batch 64
      6.06 ms against 1.84 ms (3.29x)") for every variant but float32 whose latency is above
      float32's at any batch size both were measured at; {} when none is (or float32 was not
      measured). Any excess counts: a median above float32's is flagged, however small, so that
      no slower variant goes unsaid; the line gives the ratio, and when every excess is under
      :data:`LATENCY_SPREAD` it says that this is within the spread of medians on a shared
      machine (``benchmarks/variant_latency.py`` times a run's variants again, round by round).
    """
    base = (variants.get("float32") or {}).get("cpu_latency_ms") or {}
    flags = {}
    for name, figures in variants.items():
        latency = (figures or {}).get("cpu_latency_ms") or {}
        slower = [(b, latency[b], base[b]) for b in base
                  if name != "float32" and latency.get(b) is not None and base[b] is not None
                  and latency[b] > base[b]]
        if slower:
            flags[name] = (f"{name} is slower than float32 on the CPU that measured it: " + ", ".join(
                f"{b.replace('_', ' ')} {ms:.2f} ms against {ref:.2f} ms"
                + (f" ({ms / ref:.2f}x)" if ref > 0 else "") for b, ms, ref in slower))
            if all(ref > 0 and ms < LATENCY_SPREAD * ref for _, ms, ref in slower):
                flags[name] += (f"; under {LATENCY_SPREAD:g}x, within the spread of medians on a "
                                "shared machine (benchmarks/variant_latency.py times them again)")
    return flags


def format_table(report: Report | dict) -> str:
    """A short plain-text table of a report's figures."""

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def num(v):
        return "-" if v is None else f"{v:,}"

    rows = [("method", report.get("method")), ("dataset", report.get("dataset"))]
    rows += [(f"transfer set: {k}", num(v)) for k, v in
             (report.get("transfer_set_sources") or {}).items()]
    rows += [
        ("teacher queries sent", num(report.get("teacher_queries_sent"))),
        ("teacher ledger hits", num(report.get("teacher_ledger_hits"))),
        ("teacher accuracy (served)", pct(report.get("teacher_accuracy"))),
        ("student accuracy (served)", pct(report.get("student_accuracy"))),
        ("student fidelity to teacher", pct(report.get("student_fidelity"))),
        ("student agreement, served / training",
         f"{pct(report.get('student_served_agreement'))} / "
         f"{pct(report.get('student_training_agreement'))}"),
        ("student validation accuracy", pct(report.get("student_validation_accuracy"))),
        ("test images", num(report.get("eval_examples"))),
        ("teacher params / bytes",
         f"{num(report.get('teacher_parameters'))} / {num(report.get('teacher_saved_model_bytes'))}"),
        ("student params / bytes",
         f"{num(report.get('student_parameters'))} / {num(report.get('student_saved_model_bytes'))}"),
    ]
    variants = report.get("student_variants") or {}
    for variant, figures in variants.items():
        latency = figures.get("cpu_latency_ms") or {}
        rows.append((f"student {variant}",
                     f"{pct(figures['accuracy'])}, {num(figures['saved_model_bytes'])} bytes, "
                     f"{latency.get('batch_1', 0):.2f} / {latency.get('batch_64', 0):.2f} ms "
                     "(batch 1 / 64)"))
    slower = report.get("student_slower_than_float32")  # None in a report.json from before it.
    rows += [("SLOWER than float32", line) for line in
             (slower if slower is not None else slower_than_float32(variants)).values()]
    rows += [(f"seconds: {k}", f"{v:.1f}") for k, v in (report.get("stage_seconds") or {}).items()]
    if report.get("model_card"):
        rows.append(("model card", report["model_card"]["markdown"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


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
