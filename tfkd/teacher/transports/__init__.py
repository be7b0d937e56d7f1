"""The transports that reach a served classifier, one :class:`tfkd.teacher.protocol.Transport` each:
TF Serving's gRPC API (:class:`GrpcTransport`, a target without a scheme), its REST API
(:class:`RestTransport`, ``http(s)://``), and a SavedModel in this process
(:class:`InProcessTransport`, :func:`tfkd.teacher.from_saved_model`).

:func:`transport_for` picks a target's transport by its URL scheme (:data:`TRANSPORTS`, to which
:func:`register_transport` adds one); :class:`tfkd.teacher.client.ServingClient` opens every target
through it and adds retries, request splitting and concurrency, the same for all of them.
"""

from __future__ import annotations

from tfkd.teacher.protocol import TRANSPORTS
from tfkd.teacher.protocol import register_transport
from tfkd.teacher.protocol import scheme
from tfkd.teacher.transports.grpc import GrpcTransport
from tfkd.teacher.transports.in_process import InProcessTransport
from tfkd.teacher.transports.rest import RestTransport

__all__ = ["TRANSPORTS", "register_transport", "scheme", "transport_for", "GrpcTransport",
           "RestTransport", "InProcessTransport"]


def transport_for(target: str):
    """The factory (``factory(config) -> Transport``) that opens ``target``: the one registered for
    its URL scheme (:data:`TRANSPORTS`), else :class:`GrpcTransport` (``host:port``, ``unix:path``).
    """
    return TRANSPORTS.get(scheme(target), GrpcTransport)


register_transport("http", RestTransport)
register_transport("https", RestTransport)
