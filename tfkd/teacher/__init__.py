"""The teacher side: what a method asks (:class:`Teacher`), what answers, and what it costs.

::

    protocol.py     the Teacher and Transport protocols, the signatures, the transport registry
    config.py       ServingConfig, TeacherConfig, RetryPolicy, the address and TLS/token checks
    labels.py       a teacher's output read as soft labels, checked
    account.py      the query account (budget, queries_sent.log) and the answer ledger
    client.py       ServingClient: any transport wrapped with retries, request splitting and
                    concurrency, the version pinned; top1/accuracy of a served model
    teacher_client.py  TeacherClient (the one-worker Teacher), tfkd.connect, from_saved_model
    cluster.py      ShardedTeacher: the Teacher as one worker of a cluster sees it
    transports/     grpc.py, rest.py, in_process.py: one Transport each, by URL scheme

``tfkd.connect(target)`` (:func:`connect`) opens a teacher over the transport its URL scheme names;
:func:`tfkd.teacher.client.connect` opens any other served model (a student being measured) the same
way.
"""

from __future__ import annotations

from tfkd.errors import QueryBudgetExceeded
from tfkd.errors import TeacherError
from tfkd.teacher import transports
from tfkd.teacher.account import QueryAccount
from tfkd.teacher.account import QueryLedger
from tfkd.teacher.config import RetryPolicy
from tfkd.teacher.config import ServingConfig
from tfkd.teacher.config import TeacherConfig
from tfkd.teacher.labels import MAX_QUANTIZED_SUM_TOLERANCE
from tfkd.teacher.labels import OUTPUT_KINDS
from tfkd.teacher.labels import QUANTIZATION_STEP
from tfkd.teacher.labels import SUM_TOLERANCE
from tfkd.teacher.labels import check_soft_labels
from tfkd.teacher.labels import to_soft_labels
from tfkd.teacher.protocol import Teacher
from tfkd.teacher.protocol import TeacherSignature
from tfkd.teacher.protocol import Transport
from tfkd.teacher.protocol import register_transport
from tfkd.teacher.teacher_client import TeacherClient
from tfkd.teacher.teacher_client import connect
from tfkd.teacher.teacher_client import from_saved_model

__all__ = [
    "Teacher", "TeacherClient", "TeacherConfig", "TeacherSignature", "connect", "from_saved_model",
    "QueryAccount", "QueryLedger", "to_soft_labels", "check_soft_labels", "OUTPUT_KINDS",
    "SUM_TOLERANCE", "QUANTIZATION_STEP", "MAX_QUANTIZED_SUM_TOLERANCE", "ServingConfig",
    "RetryPolicy", "Transport", "register_transport", "transports", "TeacherError",
    "QueryBudgetExceeded",
]
