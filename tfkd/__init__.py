"""tfkd: black-box knowledge distillation for teachers served by TensorFlow Serving.

A small *student* is trained from a *teacher* you can only call (TF Serving's gRPC or REST API),
with a few unlabeled images or none, and handed back as a SavedModel in TF Serving's layout.

The public API (``tfkd.__all__``)::

    report = tfkd.distill(workdir="/tmp/run")                 # FS-BBT on Fashion-MNIST
    report = tfkd.distill(tfkd.DistillConfig(workdir="/tmp/run", method="db3kd",
                                             teacher=tfkd.TeacherConfig(target="host:8500")))
    with tfkd.connect("http://host:8501", model_name="my_model") as teacher:  # a Teacher
        soft_labels = teacher.soft_labels(images)             # float32 [n, K]

* :func:`distill` / :class:`DistillConfig` (:mod:`tfkd.pipeline`): one run, every stage, resumable.
* :mod:`methods`: the registered distillation methods (FS-BBT, DB3KD, ZSDB3KD, ZSKD); a new one is
  a :class:`tfkd.methods.Method` subclass.
* :class:`Teacher`, :func:`connect`, :class:`TeacherConfig` (:mod:`tfkd.teacher`, its transports
  in :mod:`tfkd.teacher.transports`): the teacher over gRPC, REST or in-process, with its query
  account, ledger and budget.
* :class:`StudentConfig` (:mod:`tfkd.student`): how the student trains.
* :mod:`export`: the student's SavedModel variants (float32, float16, int8) and deployment.
* :mod:`serving`: a TF-Serving-compatible model server (gRPC and REST).
* :mod:`errors`: :class:`TfkdError` and its subclasses, the only errors raised on purpose.
"""

from __future__ import annotations

from tfkd import errors
from tfkd import export
from tfkd import methods
from tfkd import serving
from tfkd.errors import ConfigError
from tfkd.errors import QueryBudgetExceeded
from tfkd.errors import TeacherError
from tfkd.errors import TfkdError
from tfkd.errors import WorkdirError
from tfkd.pipeline import DistillConfig
from tfkd.report import Report
from tfkd.student import StudentConfig
from tfkd.teacher import Teacher
from tfkd.teacher import TeacherConfig
from tfkd.teacher import connect

__all__ = [
    "distill", "DistillConfig", "StudentConfig", "Report",
    "methods", "Teacher", "TeacherConfig", "connect",
    "export", "serving",
    "errors", "TfkdError", "ConfigError", "TeacherError", "QueryBudgetExceeded", "WorkdirError",
]


def distill(config: DistillConfig | None = None, *, strategy=None, **fields) -> Report:
    """Distils the teacher into a student: data, teacher, transfer set, student, export, report.

    Args:
      config: a :class:`DistillConfig`; or give its fields as keywords (``workdir=`` at least),
        which also override those of ``config``, each checked against its field's type
        (:meth:`DistillConfig.with_settings`: a nested config as an instance or a dict of its
        fields, applied over the one there). Settings left unset take the library's defaults
        (:meth:`DistillConfig.resolved`: the dataset's and the method's), the same as
        ``tfkd-distill`` with no flag.
      strategy: the ``tf.distribute`` strategy the student trains under; default: mirrored over
        the local devices.

    Returns:
      the :class:`Report` (also written to ``<workdir>/report.json``): accuracies in [0, 1],
      queries sent by stage, the exported student's directories, stage times in seconds.

    Raises:
      ConfigError: a setting of the wrong type or out of range, no config and no ``workdir``
        (before anything is read or sent); TeacherError
      (QueryBudgetExceeded included), WorkdirError, and the other :class:`TfkdError` s.
    """
    from tfkd import pipeline

    if config is None:
        if "workdir" not in fields:
            raise ConfigError("workdir: expected a work dir (distill(workdir=...) or a "
                              "DistillConfig), got neither")
        config = DistillConfig(workdir="")  # Replaced by fields["workdir"], checked.
    return pipeline.run(config.with_settings(fields), strategy)
