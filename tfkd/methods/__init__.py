"""Distillation methods as plug-ins: what each needs from the teacher, and the transfer set it builds.

A method is a :class:`Method` registered under a name (``register``); ``--method`` offers
:func:`names`, and :func:`tfkd.pipeline.run` looks the name up with :func:`get`. The pipeline owns
everything around a method (data, the teacher connection and its query account, the student's
training, export, evaluation, the report); a method only

* declares what it needs from the teacher (``teacher_needs``: ``soft_labels``; ``top1_labels``,
  for which the pipeline hands it the teacher's label-only view (one-hot answers); ``weights``, for
  which it also gets the teacher's SavedModel; or ``none``) and whether it reads the few-shot
  images' true labels (only the ``student_alone`` baseline does),
* says which of its settings its transfer set depends on (:meth:`Method.fingerprint`, for reuse),
* plans its teacher queries before any is sent (:meth:`Method.plan`, checked against the budget),
* builds the *transfer set*: the images the student learns from and their targets
  (:meth:`Method.build` -> :class:`TransferSet`), and
* names the student's loss (``loss``: a name in :data:`tfkd.student.LOSSES`).

The FS-BBT family (Nguyen et al., ECCV 2022: ``student_alone``, ``standard_kd``, ``mixup``, ``cvae``,
``fsbbt``) lives in :mod:`tfkd.methods.fsbbt`, the DB3KD family (Wang, ICML 2021: ``db3kd``) in
:mod:`tfkd.methods.db3kd`; both are registered on import of this package.

A method defined elsewhere plugs in the same way::

    class UniformNoise(methods.Method):
        name = "uniform_noise"
        def plan(self, ctx):
            return {"label_noise": ctx.teacher.share(1000)}
        def build(self, ctx):
            images = np.random.default_rng(ctx.seed).uniform(
                size=(1000, *ctx.image_shape)).astype(np.float32)
            return methods.TransferSet.from_parts(
                [("noise", images, ctx.teacher.soft_labels(images, stage="label_noise"))])

    methods.register(UniformNoise())
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any
from typing import Callable

import numpy as np

from tfkd import errors
from tfkd import fs

TEACHER_NEEDS = ("soft_labels", "top1_labels", "weights", "none")


@dataclasses.dataclass
class TransferSet:
    """The images a student learns from, with their targets, by source.

    Attributes:
      images: float32 [n, H, W, C] in [0, 1].
      targets: float32 [n, K], rows summing to 1 (teacher soft labels, one-hot top-1 labels, or a
        method's own soft targets).
      source: int8 [n], an index into ``source_names``.
      source_names: what each source is ("real" for the few-shot images, then the method's own:
        "mixup", "cvae", ...).
    """

    images: np.ndarray
    targets: np.ndarray
    source: np.ndarray
    source_names: tuple[str, ...]

    @classmethod
    def from_parts(cls, parts: list[tuple[str, np.ndarray, np.ndarray]]) -> "TransferSet":
        """Concatenates ``(source name, images [n_i, H, W, C], targets [n_i, K])`` parts in order.

        Raises:
          ValueError: no parts, or a part whose images and targets differ in length (a method's
            bug: its :meth:`Method.build` makes the parts).
        """
        if not parts:
            raise ValueError(  # Programming error: a method's build() passes its parts.
                "parts: expected at least one (name, images, targets) part")
        for name, images, targets in parts:
            if len(images) != len(targets):
                raise ValueError(  # Programming error: a method's build() pairs images, targets.
                    f"part {name!r}: {len(images)} images but {len(targets)} targets")
        names = tuple(dict.fromkeys(name for name, _, _ in parts))
        return cls(np.concatenate([p[1] for p in parts]).astype(np.float32),
                   np.concatenate([p[2] for p in parts]).astype(np.float32),
                   np.concatenate([np.full(len(p[1]), names.index(p[0]), np.int8) for p in parts]),
                   names)

    def __len__(self) -> int:
        return len(self.images)

    def count(self, source: str) -> int:
        """Images from ``source`` (0 for a source this set does not have)."""
        if source not in self.source_names:
            return 0
        return int(np.sum(self.source == self.source_names.index(source)))

    def save(self, path: str) -> None:
        """Writes an ``.npz`` atomically (temp name, then rename)."""
        fs.save_npz(path, images=self.images, targets=self.targets, source=self.source,
                    source_names=np.asarray(self.source_names))

    @classmethod
    def load(cls, path: str) -> "TransferSet":
        with fs.load_npz(path) as f:
            return cls(f["images"], f["targets"], f["source"],
                       tuple(str(s) for s in f["source_names"]))


@dataclasses.dataclass
class MethodContext:
    """What the pipeline hands a method.

    Attributes:
      config: the run's :class:`tfkd.config.DistillConfig` (seed, workdir; the method's own
        settings, an instance of its :attr:`Method.config_class`, are ``config.method_config``).
      few_shot: float32 [N, H, W, C] in [0, 1], the few unlabeled images.
      num_classes: K, the data's classes.
      teacher: what the method may ask (None if ``teacher_needs`` is "none"): ``soft_labels(images,
        progress=, stage=)`` -> float32 [n, K], ``missing(images)`` (images the ledger cannot
        answer), ``share(n)`` (how many of n images this worker asks about: under
        MultiWorkerMirroredStrategy each worker labels its shard and every worker gets every
        answer), ``signature.identity`` and ``label_only``.
      few_shot_labels: int [N] true labels, only for a method with ``reads_true_labels``.
      teacher_saved_model: the teacher's SavedModel version directory, only for a method whose
        ``teacher_needs`` is "weights" (a local teacher: :meth:`tfkd.pipeline.DistillConfig.validate`
        refuses such a method with a remote one).
      stage: ``with ctx.stage("name"):`` times a step for the report's ``stage_seconds``.
      strategy: the run's ``tf.distribute`` strategy (the student's), for a method whose synthesis
        spreads over its replicas (``zskd``); None: the default one.
      artifacts: the run's :class:`tfkd.workdir.ArtifactStore`: ``artifacts.path(stem, suffix,
        *settings)`` names a state the method persists (the run's data, seed, N and teacher are
        in every name), ``artifacts.reuse_or_build(...)`` reuses it, setting aside one that does
        not load.
      method_report: an instance of the method's :attr:`Method.report_class` (None without one):
        the method's own report fields, written to ``report.json`` under ``method_report``.
    """

    config: Any
    few_shot: np.ndarray
    num_classes: int
    teacher: Any = None
    few_shot_labels: np.ndarray | None = None
    teacher_saved_model: str | None = None
    stage: Callable[[str], contextlib.AbstractContextManager] = \
        lambda name: contextlib.nullcontext()  # noqa: E731
    strategy: Any = None
    artifacts: Any = None
    method_report: Any = None
    _memo: dict = dataclasses.field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def workdir(self) -> str:
        return self.config.workdir

    @property
    def settings(self):
        """The method's own settings: ``config.method_config``, an instance of its
        :attr:`Method.config_class` (None for a method without)."""
        return self.config.method_config

    @property
    def image_shape(self) -> tuple:
        return tuple(self.few_shot.shape[1:])

    @property
    def progress(self) -> bool:
        """Progress bars (verbose 1, a terminal)."""
        return self.config.verbose == 1

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per run: what :meth:`Method.plan` computed, :meth:`Method.build` reuses."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """How a method spends a query budget smaller than its plan (:meth:`Method.budget_plan`);
    :func:`tfkd.pipeline.fit_query_budget` uses it before any query is sent.

    Attributes:
      queries_per_image: teacher queries each transfer-set image costs (>= 1; FS-BBT's votes from
        a label-only teacher: 1 + k). The budget, less the teacher's evaluation, is divided by it.
      synthetic_images: images the full plan adds to the N real ones; when the plan is cut, the
        student keeps the training length (optimizer steps) it would have had over N + these.
      fit: ``fit(images, num_real) -> (config, summary)``: the run's config with the plan cut to at
        most ``images`` transfer-set images of which ``num_real`` are the real ones (the config
        itself when the plan fits), and JSON-able figures of what is left (``report.json``'s
        ``query_plan_fitted``). Deterministic: a rerun recomputes it to find its transfer set
        again. None: the method cuts nothing.
      labels_real_images: the plan asks the teacher about the N real images (the few-shot
        families); False for a zero-shot method, whose plan is its synthetic images only (the budget
        then reserves nothing for real images and ``fit`` gets ``num_real`` 0).
    """

    queries_per_image: int = 1
    synthetic_images: int = 0
    fit: Callable[[int, int], tuple[Any, dict]] | None = None
    labels_real_images: bool = True


class Method:
    """A distillation method. Subclass, set the class attributes, override :meth:`build` (and
    :meth:`plan` and :meth:`fingerprint` when the method asks the teacher or has settings).

    Attributes:
      name: the registry name (``--method``).
      teacher_needs: one of ``TEACHER_NEEDS``.
      reads_true_labels: the method reads the few-shot images' labels (a supervised baseline).
      loss: the student's loss, a name in :data:`tfkd.student.LOSSES`; None: the config's.
      description: one line for ``--help``.
      config_class: the method's own settings, a frozen dataclass (defaults, a ``validate()``
        method if it checks them, a docstring per field); ``DistillConfig.method_config`` holds an
        instance (the command: ``--method_settings`` as JSON). None: the method has none.
      report_class: a dataclass of the method's own report fields; the pipeline hands an instance
        to :meth:`build` as ``ctx.method_report`` and writes it to ``report.json`` under
        ``method_report``. None: none.
      student_defaults: ((StudentConfig field, value), ...): this method's student recipe where it
        differs from :data:`tfkd.student.RECIPE` (each chosen on the validation split;
        RESULTS.md), applied to the recipe fields a config leaves unset
        (:meth:`tfkd.pipeline.DistillConfig.resolved`); a value the user sets still wins.
      flag_prefix: what ``tfkd-distill`` puts before a ``config_class`` field's dotted name (``.``
        as ``_``) to make its flag; None: the method's name and ``_`` (``--uniform_noise_count``).
        The shipped families use ``""``: their settings are namespaced already
        (``--mixup_alpha``). Methods sharing a config class share its flags.
    """

    name: str = ""
    teacher_needs: str = "soft_labels"
    reads_true_labels: bool = False
    loss: str | None = None
    description: str = ""
    student_defaults: tuple = ()
    config_class: type | None = None
    report_class: type | None = None
    flag_prefix: str | None = None

    def resolve(self, config):
        """The run's config with this method's own defaults in the settings left unset (None,
        ``auto``); :meth:`tfkd.config.DistillConfig.resolved` calls it last, after applying
        :attr:`student_defaults` and making ``config.method_config`` an instance of
        :attr:`config_class`. Must be idempotent. Default: the config unchanged."""
        return config

    def fingerprint(self, config) -> tuple:
        """JSON-able settings the transfer set depends on besides data, seed, N and the teacher's
        identity (which the pipeline adds). Default: the method's own settings
        (``config.method_config``), if it has any."""
        return () if config.method_config is None else (config.method_config,)

    def make_loss(self, config):
        """Given the run's :class:`tfkd.config.DistillConfig`, the student's loss as
        ``loss(reduction=...) -> keras.losses.Loss`` (logits [b, K] against targets [b, K]; a
        custom training loop asks for ``reduction=None``), or None: the
        named loss of :meth:`student_config` (:func:`tfkd.student.make_loss`). Override to train
        with a loss of the method's own (its settings: ``config.method_config``)."""
        return None

    def student_config(self, config):
        """The :class:`tfkd.student.StudentConfig` the student trains with: the run's, with this
        method's ``loss`` when it names one. Override to set more (a temperature, ...)."""
        if self.loss is None:
            return config.student
        return dataclasses.replace(config.student, loss=self.loss)

    def budget_plan(self, config, teacher) -> "BudgetPlan":
        """How this method fits a query budget smaller than its plan, given the run's (resolved)
        config and the :class:`tfkd.teacher.Teacher` it will ask. Default: ``BudgetPlan()`` (one
        query per image, nothing cut: the pipeline's budget check then refuses a plan that does
        not fit)."""
        return BudgetPlan()

    def plan(self, ctx: MethodContext) -> dict[str, int]:
        """Teacher queries this process will send, by stage (less ledger answers), before any is
        sent; the pipeline checks the sum against the query budget. Default: none."""
        return {}

    def build(self, ctx: MethodContext) -> TransferSet:
        """The transfer set. Raises what the teacher raises (TeacherError, QueryBudgetExceeded)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: dict[str, Method] = {}


def register(method: Method | type, replace: bool = False):
    """Registers a :class:`Method` (an instance, or a subclass: instantiated) under its ``name``.

    Usable as a class decorator. Returns what it was given.

    Raises:
      tfkd.errors.ConfigError: no name, a name taken (unless ``replace``: two plug-ins of one
        name), or ``teacher_needs`` not one of ``TEACHER_NEEDS``.
      TypeError: not a :class:`Method` (the caller's bug).
    """
    instance = method() if isinstance(method, type) else method
    if not isinstance(instance, Method):
        raise TypeError(  # Programming error: the caller registers an object, not a Method.
            f"method: expected a tfkd.methods.Method, got {type(instance).__name__}")
    if not instance.name or not instance.name.isidentifier():
        raise errors.ConfigError(f"method.name={instance.name!r}: expected a non-empty identifier")
    if instance.teacher_needs not in TEACHER_NEEDS:
        raise errors.ConfigError(f"method {instance.name!r}: teacher_needs="
                                 f"{instance.teacher_needs!r}: expected one of {TEACHER_NEEDS}")
    if instance.name in _REGISTRY and not replace:
        raise errors.ConfigError(f"method {instance.name!r} is already registered "
                                 f"({_REGISTRY[instance.name]!r}); pass replace=True to replace it")
    _REGISTRY[instance.name] = instance
    return method


def get(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
      tfkd.errors.ConfigError: no such method (the registered names are listed).
    """
    if name not in _REGISTRY:
        raise errors.ConfigError(f"method={name!r}: expected one of {names()}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def load_plugins(plugins) -> None:
    """Imports each plug-in, ``module`` or ``module:function`` (which also calls ``function()``),
    in order, so that the methods they register can be named (``tfkd-distill --plugins``).

    Raises:
      tfkd.errors.ConfigError: one line naming the plug-in and what it raised (on import, or
        from its function; a module that is not there; a function it does not have).
    """
    import importlib

    for plugin in plugins:
        name, _, function = plugin.partition(":")
        if not name or (":" in plugin and not function.isidentifier()):
            raise errors.ConfigError(f"plugin {plugin!r}: expected module or module:function")
        try:
            module = importlib.import_module(name)
            if function:
                getattr(module, function)()
        except Exception as e:  # Whatever a plug-in raises, one line naming it.
            detail = " ".join(str(e).split())
            raise errors.ConfigError(f"plugin {plugin!r}: {type(e).__name__}: {detail}") from None


from tfkd.methods import fsbbt  # noqa: E402,F401  (registers the FS-BBT family)

# isort: split
from tfkd.methods import db3kd  # noqa: E402,F401  (registers the DB3KD family)

# isort: split
from tfkd.methods import zskd  # noqa: E402,F401  (registers ZSKD)

# isort: split
from tfkd.methods import priors  # noqa: E402,F401  (registers prior_kd)
