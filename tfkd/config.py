"""The run's configuration: :class:`DistillConfig` (one frozen dataclass per stage inside it) and
the one place its defaults are resolved (:meth:`DistillConfig.resolved`)."""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfkd import data as data_lib
from tfkd import errors
from tfkd import export
from tfkd import images as images_lib
from tfkd import methods
from tfkd import student as student_lib
from tfkd import teacher as teacher_lib
from tfkd import vertex
from tfkd.settings import dataclass_in as _dataclass_in
from tfkd.settings import is_union as _is_union
from tfkd.student import models


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig:
    """Training of a teacher on the training split (what its owner would have done), when the run
    has no teacher target.

    Attributes:
      architecture: a name in :data:`tfkd.student.models.MODELS`; ``auto``: the paper's teacher for the
        dataset (its :class:`tfkd.data.DatasetSpec`'s ``teacher``; :meth:`resolved`).
      epochs, batch_size, learning_rate: Adam training.
      lr_schedule: ``cosine`` decay to 0 (a constant rate leaves LeNet-5 below 89% on
        Fashion-MNIST after 20 epochs) or ``constant``.
    """

    architecture: str = "auto"
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"

    def validate(self) -> None:
        """Raises ConfigError naming the first field out of range (``teacher_train.<field>``)."""
        errors.check_settings("teacher_train.", self, [
            ("architecture", self.architecture == "auto" or self.architecture in models.MODELS,
             f"'auto' or one of {sorted(models.MODELS)}"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("lr_schedule", self.lr_schedule in student_lib.LR_SCHEDULES, student_lib.LR_SCHEDULES),
        ])

    def resolved(self, dataset: str) -> "TeacherTrainConfig":
        """``architecture`` ``auto`` given the paper's teacher for ``dataset`` (a registered name,
        :func:`tfkd.data.dataset_spec`). Idempotent. Raises ConfigError for an unknown dataset."""
        if self.architecture != "auto":
            return self
        return dataclasses.replace(self, architecture=data_lib.dataset_spec(dataset).teacher)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Everything one run needs; defaults are FS-BBT's Fashion-MNIST setting.

    Attributes:
      workdir: where everything of the run is written (see module docstring).
      method: a registered method (:func:`tfkd.methods.names`; each family's table is in its
        package under :mod:`tfkd.methods`).
      dataset: a registered dataset (:func:`tfkd.data.register_dataset`), whose
        :class:`tfkd.data.DatasetSpec` gives the defaults :meth:`resolved` fills.
      data_dir: see :func:`tfkd.data.load_dataset`.
      images: the user's own images in place of ``dataset`` (:class:`tfkd.images.ImageSourceConfig`):
        unlabeled few shots at the teacher's input size, and optional evaluation images (labelled
        by class sub-folders, or not: then the report gives fidelity). Needs a remote
        ``teacher.target``; ``num_validation`` must be 0 (there are no labels to validate on).
      seed: one seed for sampling, synthesis and training.
      num_shots: N, the unlabeled real images (balanced over classes; the dataset's spec gives the
        paper's); with ``images``, a uniform draw of N of them (0: all).
      teacher: how to reach and read the teacher (:class:`tfkd.teacher.TeacherConfig`); an empty
        ``target`` trains a teacher into the work dir if none is there, serves it on a free loopback
        port, and stops it at the end. ``teacher.query_budget`` caps the images sent.
      teacher_train: used only when tfkd trains the teacher.
      teacher_saved_model: the teacher's SavedModel (a version directory, or a TF Serving base path:
        its newest version), loaded in-process by a method that needs the teacher's weights
        (``teacher_needs`` ``weights``); with a remote ``teacher.target`` it is required for such a method.
      student: how the student trains (a method may name its own loss).
      num_validation: training images held out as the validation split (the same images for
        every seed and method; see :func:`tfkd.data.with_validation_split`): neither the teacher
        tfkd trains nor the few shots come from them. Choices and training-time monitoring use
        them; the test split is read once, for the reported accuracies. 0: no validation split.
      eval_examples: test images used for the accuracies (0: the full test set).
      evaluate_test: measure the test accuracies. False for runs that only make a choice on the
        validation split: the test split is then not read at all.
      evaluate_teacher: also measure the teacher's test accuracy through its endpoint (costs test-set queries,
        counted in the work dir's query account and budget like every other query).
      compress: compressed student variants to export and measure besides float32 (see
        :data:`tfkd.export.VARIANTS`), each in ``export/student_<variant>/<version>/``.
      verbose: Keras verbosity: 0 silent, 1 progress bars (also for labelling), 2 one line per epoch.
      outputs: where the exported student, the student's checkpoints and TensorBoard events also
        or instead go (:class:`tfkd.vertex.OutputDirs`; Vertex AI's ``AIP_*`` directories).
      method_config: the method's own settings (:attr:`tfkd.methods.Method.config_class`: its
        synthesis, search, ...): an instance, a dict of its fields (JSON; dotted names reach nested ones), or
        None: its defaults. :meth:`resolved` makes it an instance. :meth:`with_settings` takes
        its fields by their own dotted names too (``mixup.alpha``).
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
    student: student_lib.StudentConfig = student_lib.StudentConfig()
    teacher_saved_model: str | None = None
    eval_examples: int = 0
    evaluate_test: bool = True
    evaluate_teacher: bool = True
    compress: tuple = ("float16", "int8")
    verbose: int | None = None
    outputs: vertex.OutputDirs = vertex.OutputDirs()
    method_config: Any = None

    def with_settings(self, settings: dict) -> "DistillConfig":
        """This config with ``settings`` applied: ``{"num_shots": 500, "student.epochs": 10,
        "teacher.target": "host:8500"}`` (dotted names reach the nested configs; JSON values:
        lists become tuples where the field holds one, objects are applied over the nested config,
        integral floats become ints and ints floats where the field says so). Every value is
        checked against its field's type annotation (:func:`override`). What ``tfkd.distill``'s
        keywords, ``--params_override``, Kubeflow components and other JSON-driven callers use
        (Model Garden's ``params_override``).

        A name that is no field of this class but one of the method's own settings
        (:attr:`tfkd.methods.Method.config_class`, the method named in ``settings`` or else this
        config's) is that setting: ``{"mixup.alpha": 0.5}`` is ``{"method_config.mixup.alpha":
        0.5}`` for a method whose settings have ``mixup``.

        Raises:
          ConfigError: one line naming the setting, what was expected and what came: a name that
            is no field (with the fields there are), an empty or partial name, a value of
            another type (bool for an int, a str for a list, a non-mapping for a nested config).
        """
        if not isinstance(settings, Mapping):
            return override(self, settings)  # Refused there, in its words.
        method = settings.get("method", self.method)
        cls = methods.get(method).config_class if method in methods.names() else None
        own = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
        mine = {f.name for f in dataclasses.fields(self)}
        routed, theirs = {}, {}
        for key, value in settings.items():
            head = key.partition(".")[0] if isinstance(key, str) else None
            if head in own and head not in mine:
                theirs[key] = value
                key = f"method_config.{key}"
            routed[key] = value
        if theirs:
            override(cls(), theirs)  # Each value's type checked now, by the name it was given.
        return override(self, routed, fields_also=sorted(own - mine))

    def resolved(self) -> "DistillConfig":
        """This config with every setting left unset (None, ``auto``) given its default, the one
        place those defaults are decided (the launcher passes what the user left out as unset):

        * from the dataset's :class:`tfkd.data.DatasetSpec` (:func:`tfkd.data.dataset_spec`):
          ``num_shots`` the paper's N (with ``images``, 0: all), ``num_validation`` (0 with
          ``images``), the paper's teacher and student architectures (``mobilenet_v3_small`` for
          the user's images);
        * from the method: its student recipe (:attr:`tfkd.methods.Method.student_defaults`, then
          :data:`tfkd.student.RECIPE`) and its own settings: ``method_config`` an instance of its
          :attr:`~tfkd.methods.Method.config_class` (a dict of fields applied over its defaults),
          then :meth:`tfkd.methods.Method.resolve` (the method's ``auto`` settings);
        * ``verbose``: 1 (progress bars) on a terminal, 2 (a line per epoch) otherwise.

        The layers below (training, synthesis, the search) refuse a value still unset with a
        ValueError (a programming error): nothing below decides a default, except what needs the
        run itself (the CVAE's ``auto`` for the user's images, at the size the teacher's signature
        gives; the student's ``loop`` and ``jit_compile``, by the distribution strategy).

        Idempotent. Raises :class:`tfkd.errors.ConfigError` for an unknown ``dataset`` or
        ``method``.
        """
        method = methods.get(self.method)
        spec = data_lib.dataset_spec(self.dataset)
        own = self.images is not None
        config = dataclasses.replace(
            self,
            num_shots=(self.num_shots if self.num_shots is not None
                       else 0 if own else spec.num_shots),
            num_validation=(self.num_validation if self.num_validation is not None
                            else 0 if own else spec.num_validation),
            teacher_train=self.teacher_train.resolved(self.dataset),
            student=self.student.resolved({"architecture": "mobilenet_v3_small" if own
                                           else spec.student, **dict(method.student_defaults)}),
            verbose=self.verbose if self.verbose is not None else 1 if sys.stdout.isatty() else 2)
        own, cls = config.method_config, method.config_class
        if cls is not None and not isinstance(own, cls):
            if own is not None and not isinstance(own, dict):
                raise errors.ConfigError(f"method_config: expected a {cls.__name__} or a dict of "
                                         f"its fields, got {type(own).__name__}")
            config = dataclasses.replace(config, method_config=override(cls(), dict(own or {})))
        return method.resolve(config)

    def validate(self) -> None:
        """Checks every setting that can be checked without data, teacher or training: first each
        field's type (:func:`check_types`: nested configs included; bool is not an int, a str
        is not a tuple), then each value as :meth:`resolved` fills them.

        Raises:
          ConfigError (a ValueError): naming the first field of the wrong type or out of range,
          and what it accepts.
        """
        check_types(self)
        self.resolved()._check()

    def _check(self) -> None:
        method = methods.get(self.method)
        if method.config_class is None and self.method_config:
            raise errors.ConfigError(f"method_config={self.method_config!r}: method "
                                     f"{self.method!r} has no settings of its own")
        if hasattr(self.method_config, "validate"):
            try:
                self.method_config.validate()
            except errors.ConfigError:
                raise
            except ValueError as e:  # A plug-in's own check: one error type for every setting.
                raise errors.ConfigError(str(e)) from None
        checks = [
            ("num_shots", self.num_shots, self.num_shots >= (0 if self.images else 1),
             ">= 1 (0, all, only with images)"),
            ("num_validation", self.num_validation, self.num_validation >= 0, ">= 0"),
            ("eval_examples", self.eval_examples, self.eval_examples >= 0, ">= 0"),
            ("verbose", self.verbose, self.verbose in (0, 1, 2), "0, 1 or 2"),
            ("compress", self.compress, set(self.compress) <= set(export.FORMATS) - {"float32"},
             tuple(sorted(set(export.FORMATS) - {"float32"}))),
            ("method loss", method.loss, method.loss in (None, *student_lib.LOSSES), student_lib.LOSSES),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise errors.ConfigError(f"{name}={value!r}: expected {expected}")
        self.teacher.validate(require_target=False)
        self.teacher_train.validate()
        self.outputs.validate()
        self.student.validate()
        if self.images is not None:
            self._validate_images(method)
        if method.teacher_needs == "weights" and self.teacher.target and not self.teacher_saved_model:
            raise errors.ConfigError(
                f"method={self.method!r} needs the teacher's weights and gradients, which the "
                f"endpoint {self.teacher.target} does not give: set teacher_saved_model (the "
                f"SavedModel its TF Serving base path holds), or use method="
                f"'{self.method}_blackbox', which needs only the endpoint")


    def _validate_images(self, method: methods.Method) -> None:
        self.images.validate()
        refusals = [
            (not self.teacher.target, "needs a teacher.target (host:port or http(s)://host:port: "
             "tfkd trains a teacher only on a named dataset)"),
            (self.num_validation != 0, f"needs num_validation=0, got {self.num_validation} (the "
             "images have no labels to validate on; images.eval_path evaluates)"),
            (method.reads_true_labels, f"cannot run method={self.method!r}: it reads true labels "
             "and the images have none"),
        ]
        for refused, why in refusals:
            if refused:
                raise errors.ConfigError(f"images={self.images.path!r}: {why}")


def override(config, settings: dict, prefix: str = "", fields_also: list | tuple = ()):
    """``config`` (a frozen dataclass) with dotted ``settings`` applied (see
    :meth:`DistillConfig.with_settings`), every value checked against its field's type annotation
    (:func:`conform`). A whole nested config (``{"student": {...}}``) applies before the dotted
    names inside it (``{"student.epochs": 3}``). ``prefix``: the dotted name of ``config`` itself
    in the messages (``"student."``); ``fields_also``: names also accepted, listed among the
    expected ones in the message for a name that is no field (a method's own settings).

    Raises:
      ConfigError: one line naming the setting (``settings['teacher.query_budget']``), what was
        expected and what came: a name that is no field (with the fields there are), an empty or
        partial name (``student.``), a value of another type.
    """
    if not isinstance(settings, Mapping):
        raise errors.ConfigError(f"settings: expected a mapping of setting names to values, got "
                                 f"{_shown(settings)}")
    hints = _hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes, nested = {}, {}
    for key, value in settings.items():
        if not isinstance(key, str) or not all(key.split(".")):
            shown = prefix + key if isinstance(key, str) else key
            raise errors.ConfigError(f"settings[{shown!r}]: expected a dotted setting name such "
                                     "as 'student.epochs' (a str, no empty part)")
        head, _, rest = key.partition(".")
        if head not in names:
            raise errors.ConfigError(f"settings[{prefix + key!r}]: no such setting; expected one "
                                     f"of {sorted(prefix + n for n in names | set(fields_also))}")
        if not rest:
            changes[head] = conform(hints[head], value, prefix + head, getattr(config, head))
        elif _dataclass_in(hints[head]) is None and hints[head] is not Any:
            raise errors.ConfigError(f"settings[{prefix + key!r}]: {prefix + head!r} holds a "
                                     "value, not settings")
        else:
            nested.setdefault(head, {})[rest] = value
    for head, inner in nested.items():
        changes[head] = conform(hints[head], inner, prefix + head,
                                changes.get(head, getattr(config, head)))
    return dataclasses.replace(config, **changes)


def check_types(config, prefix: str = "") -> None:
    """Checks every field of ``config`` (a dataclass, nested ones included) against its type
    annotation as :func:`conform` does for a setting given by name, except that a nested config
    must be an instance (a dataclass field holds no mapping).

    Raises:
      ConfigError: ``name=value: expected <type>, got <type of value>`` for the first field that
        does not match.
    """
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        name, value, hint = prefix + field.name, getattr(config, field.name), hints[field.name]
        if dataclasses.is_dataclass(value) and (
                hint is Any or isinstance(value, _dataclass_in(hint) or ())):
            check_types(value, name + ".")
            continue
        try:
            conform(hint, value, name, mappings=False)
        except errors.ConfigError:
            raise errors.ConfigError(f"{name}={_cut(repr(value))}: expected "
                                     f"{_describe(hint, mappings=False)}, got "
                                     f"{type(value).__name__}") from None


def _hints(cls) -> dict:
    """A dataclass's field types; ``Any`` (unchecked) for all of a class whose annotations do not
    resolve (a plug-in's settings naming a type its module imports only for type checkers)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # NameError, TypeError: what typing raises for an annotation it cannot read.
        return {f.name: Any for f in dataclasses.fields(cls)}


def conform(hint, value, name: str, current=None, mappings: bool = True):
    """``value`` as a field of type ``hint`` (dotted name ``name``, now ``current``) holds it.

    bool is not an int; an int is a float (returned as one); a float with an integral value is an
    int (JSON carriers such as KFP's protobuf Struct make every number a float); a path object
    (``os.PathLike``) is a str (its path); a list or tuple
    (never a str) is a tuple, element by element; None only where the hint allows it; a nested
    config (a dataclass) is an instance of it or, with ``mappings``, a mapping of its fields
    applied over ``current`` (with none, over the fields' defaults); ``Any`` takes anything (a
    mapping over a current config or mapping is applied over it).

    Raises:
      ConfigError: ``settings['<name>']: expected <type>, got <type> <value>``.
    """
    if hint is Any:
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
            return override(current, value, name + ".")
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            return _merged(current, value)
        return value
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        converted = _as(option, value, name, current, mappings)
        if converted is not _REFUSED:
            return converted
    raise errors.ConfigError(f"settings[{name!r}]: expected {_describe(hint, mappings)}, got "
                             f"{_shown(value)}")


_REFUSED = object()


def _merged(current: Mapping, value: Mapping) -> dict:
    """``value`` applied over ``current``, nested mappings merged key by key (settings given in
    layers: a config file's ``{"mixup": {"alpha": 1}}`` then a flag's ``{"mixup": {"num_images":
    10}}``)."""
    merged = dict(current)
    for key, item in value.items():
        old = merged.get(key)
        merged[key] = (_merged(old, item) if isinstance(old, Mapping) and isinstance(item, Mapping)
                       else item)
    return merged


def _as(hint, value, name: str, current, mappings: bool):
    """``value`` as one type of a union (see :func:`conform`), or ``_REFUSED``."""
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return _nested(hint, value, name, current) if mappings and isinstance(value, Mapping) \
            else _REFUSED
    if hint is bool:
        return value if isinstance(value, bool) else _REFUSED
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(value) if _is_int(value) else _REFUSED
    if hint is float:
        return float(value) if _is_int(value) or isinstance(value, (float, np.floating)) \
            else _REFUSED
    if hint is str:  # A path object is its path (os.fspath), as for every path field.
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        return value if isinstance(value, str) else _REFUSED
    if (typing.get_origin(hint) or hint) is tuple:
        if not isinstance(value, (list, tuple)):
            return _REFUSED
        inner = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple(value) if not inner else tuple(
            conform(inner[0], v, f"{name}[{i}]", mappings=mappings) for i, v in enumerate(value))
    return _REFUSED if hint is type(None) else value  # A hint not known here: as given.


def _nested(cls, value: Mapping, name: str, current):
    """A nested config ``cls`` from a mapping of its fields: over ``current``, or with none built
    from its required fields first."""
    if current is not None:
        return override(current, value, name + ".")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if not set(required) <= set(value):
        raise errors.ConfigError(f"settings[{name!r}]: expected a mapping of {cls.__name__} fields "
                                 f"with {', '.join(required)}, got {_shown(dict(value))}")
    hints = _hints(cls)
    base = cls(**{r: conform(hints[r], value[r], f"{name}.{r}") for r in required})
    return override(base, {k: v for k, v in value.items() if k not in required}, name + ".")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _describe(hint, mappings: bool = True) -> str:
    """A type hint in words: ``int or None``, ``list of int``, ``a mapping of StudentConfig
    fields`` (``StudentConfig`` without ``mappings``)."""
    if _is_union(hint):
        return " or ".join(_describe(a, mappings) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields" if mappings else hint.__name__
    if (typing.get_origin(hint) or hint) is tuple:
        inner = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"list of {_describe(inner[0], mappings)}" if inner else "list"
    return getattr(hint, "__name__", str(hint))


def _shown(value) -> str:
    """What came: its type and (shortened) value."""
    return f"{type(value).__name__} {_cut(repr(value))}"


def _cut(text: str, most: int = 80) -> str:
    return text if len(text) <= most else text[:most - 3] + "..."
