"""tfkd's errors: one hierarchy under :class:`TfkdError`.

Every error tfkd raises on purpose is one of these; each message names the setting (a config
field such as ``teacher.output_key``) or the input, what was expected and what came. A launcher
maps settings to its flags; the library never names a command-line flag.

::

    TfkdError
    ├── ConfigError (also ValueError)        a setting out of range or contradictory
    │   └── ImageSourceError                 images that cannot be read as asked
    ├── ServingClientError (RuntimeError)    a served model unreachable, erroring, off-contract
    │   ├── TransportError                   one exchange failed (the client retries or reports it)
    │   └── TeacherError                     ... the teacher
    │       └── QueryBudgetExceeded          the next images would exceed the query budget
    ├── ServingError                         tfkd-serve's answer to a client: a gRPC status code
    ├── InterpreterError (RuntimeError)      the LiteRT interpreter failed on inputs it accepts
    ├── WorkdirError (RuntimeError)          the work dir cannot be used as asked
    ├── DatasetUnavailableError (RuntimeError)  no source of a dataset can be read
    └── StudentError (RuntimeError)          the student failed a check a deployable one passes

``ConfigError`` is a ``ValueError`` and the others ``RuntimeError``\\ s, so code written against the
built-in types keeps working.
"""

from __future__ import annotations


class TfkdError(Exception):
    """Base of every error tfkd raises on purpose."""


class ConfigError(TfkdError, ValueError):
    """A setting out of range, contradictory, or refused by what the run found (the data, the
    teacher's signature); nothing was sent or trained because of it."""


class ImageSourceError(ConfigError):
    """An image source that holds no usable image, or labels that cannot be read from it."""


class ServingClientError(TfkdError, RuntimeError):
    """A served model could not be reached, answered an error, or broke its contract.

    The message names the model, its address and what was wrong; ``code`` is the gRPC status code
    (REST statuses are mapped to theirs) when the server answered one.
    """

    def __init__(self, message: str, code=None):
        super().__init__(message)
        self.code = code


class TransportError(ServingClientError):
    """One exchange of a transport (:class:`tfkd.teacher.protocol.Transport`) with a served model
    failed; the client that wraps the transport retries it or reports it naming the model.

    Attributes:
      code: the ``grpc.StatusCode`` (REST statuses mapped to theirs), or None where no status
        applies (an answer that is not TF Serving's); details: what failed, one line;
      retryable: False for what a retry cannot mend (a port of another protocol, an answer over
        the size limit); True: retried when ``code`` is one the retry policy covers.
    """

    def __init__(self, code, details: str, retryable: bool = True):
        super().__init__(str(details), code)
        self.details = details
        self.retryable = retryable


class TeacherError(ServingClientError):
    """The teacher could not be reached, answered an error, or broke its contract."""


class QueryBudgetExceeded(TeacherError):
    """Sending the next images would exceed the query budget; nothing beyond it was sent."""


MAX_MESSAGE_CHARS = 2000
"""Characters of a :class:`ServingError` message sent back to a client. Messages echo what the
client sent (a model name, a tensor alias); a megabyte-long name echoed whole would trip the
client's metadata limit, and the client would retry it."""


class ServingError(TfkdError):
    """An error tfkd's model server (:mod:`tfkd.serving`) answers a client with, with the gRPC
    status code TF Serving would use (the REST API maps it to an HTTP status).

    Attributes:
      code: the ``grpc.StatusCode``; message: TF Serving's wording where it has one, cut to
        :data:`MAX_MESSAGE_CHARS` characters.
    """

    def __init__(self, code, message: str):
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message)} characters)"
        super().__init__(message)
        self.code = code
        self.message = message


class InterpreterError(TfkdError, RuntimeError):
    """The LiteRT interpreter failed to run a model on inputs its signature accepts: the model is
    at fault (a damaged ``model.tflite``), not the inputs (:mod:`tfkd.export.litert`; a server
    answers it INTERNAL).

    Attributes:
      reason: the interpreter's message, on one line (without the model's path).
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class WorkdirError(TfkdError, RuntimeError):
    """The work dir cannot be used as asked: busy with another run, or its artifacts were made
    with other settings. The message names the work dir and what to do."""


class DatasetUnavailableError(TfkdError, RuntimeError):
    """No source of a dataset can be read (no data dir, no Debian package, offline)."""


class StudentError(TfkdError, RuntimeError):
    """The student failed a check that a deployable student passes: its training loss became NaN
    or infinite, or the exported student disagrees with the teacher far more than it did in
    training (:func:`tfkd.evaluation.check_served_agreement`). The message is one line naming the
    figures and the likely causes."""


def check_settings(prefix: str, config, checks) -> None:
    """The one way a config class's ``validate()`` refuses a value.

    Args:
      prefix: the config's dotted place in :class:`tfkd.DistillConfig` (``"mixup."``), put before
        each field's name in the message.
      config: the config instance whose fields are named.
      checks: ``(field, ok, expected)`` triples, in the order they are checked; ``expected`` says
        in words (or as the tuple of choices) what the field accepts.

    Raises:
      ConfigError: ``<prefix><field>=<value>: expected <expected>`` for the first check not ok.
    """
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{prefix}{name}={getattr(config, name)!r}: expected {expected}")
