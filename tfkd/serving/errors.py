"""The error a servable answers, with the gRPC status code TF Serving would use."""

import grpc

MAX_MESSAGE_CHARS = 2000
"""Characters of an error message sent back to a client. Messages echo what the client sent (a
model name, a tensor alias); a megabyte-long name echoed whole would trip the client's metadata
limit, and the client would retry it."""


class ServingError(Exception):
    """An error answered to a client with a gRPC status code, as TF Serving answers it.

    Attributes:
      code: the ``grpc.StatusCode``; message: TF Serving's wording where it has one, cut to
        :data:`MAX_MESSAGE_CHARS` characters.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message)} characters)"
        super().__init__(message)
        self.code = code
        self.message = message
