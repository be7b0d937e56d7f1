"""The error a servable answers, with the gRPC status code TF Serving would use."""

import grpc


class ServingError(Exception):
    """An error answered to a client with a gRPC status code, as TF Serving answers it.

    Attributes:
      code: the ``grpc.StatusCode``; message: TF Serving's wording where it has one.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
