"""The transports that reach a served classifier, one :class:`tfkd.teacher.protocol.Transport` per
protocol, each a module of this package, picked by how the target is written
(:func:`transport_for`):

============================================================  ==========================================
target                                                        transport
============================================================  ==========================================
``host:port``, ``unix:path``                                  TF Serving's gRPC API (:class:`GrpcTransport`)
``http(s)://host:port[/prefix]``                              TF Serving's REST API (:class:`RestTransport`)
``http(s)://host:port[/prefix]/v2``                           the Open Inference Protocol over REST
                                                              (:class:`OipRestTransport`)
``grpc+v2://host:port``                                       the Open Inference Protocol over gRPC
                                                              (:class:`OipGrpcTransport`)
``https://REGION-aiplatform.googleapis.com/v1/projects/P/``   a Vertex AI endpoint (:class:`VertexTransport`)
``locations/L/endpoints/E``, ``vertex://P/L/E``
============================================================  ==========================================

and a SavedModel in this process (:class:`InProcessTransport`, :func:`tfkd.teacher.from_saved_model`).
:data:`TRANSPORTS` maps a URL scheme to its transport's factory (:func:`register_transport` adds
one); :class:`tfkd.teacher.client.ServingClient` opens every target through it and adds retries,
request splitting and concurrency, the same for all of them.
"""

from __future__ import annotations

import urllib.parse

from tfkd.teacher.protocol import TRANSPORTS
from tfkd.teacher.protocol import register_transport
from tfkd.teacher.protocol import scheme
from tfkd.teacher.transports import oip_grpc
from tfkd.teacher.transports import oip_rest
from tfkd.teacher.transports import vertex
from tfkd.teacher.transports.grpc import GrpcTransport
from tfkd.teacher.transports.in_process import InProcessTransport
from tfkd.teacher.transports.oip_grpc import OipGrpcTransport
from tfkd.teacher.transports.oip_rest import OipRestTransport
from tfkd.teacher.transports.rest import RestTransport
from tfkd.teacher.transports.vertex import VertexTransport

__all__ = ["TRANSPORTS", "register_transport", "scheme", "transport_for", "open_http",
           "GrpcTransport", "RestTransport", "OipRestTransport", "OipGrpcTransport",
           "VertexTransport", "InProcessTransport"]


def transport_for(target: str):
    """The factory (``factory(config) -> Transport``) that opens ``target``: the one registered for
    its URL scheme (:data:`TRANSPORTS`), else :class:`GrpcTransport` (``host:port``, ``unix:path``).
    """
    return TRANSPORTS.get(scheme(target), GrpcTransport)


def http_transport(target: str) -> type:
    """The transport class of an ``http(s)://`` target, by its path: a Vertex AI endpoint
    (``.../v1/projects/P/locations/L/endpoints/E``), the Open Inference Protocol (``.../v2``),
    else TF Serving's REST API."""
    if vertex.is_endpoint(target):
        return VertexTransport
    if urllib.parse.urlsplit(target).path.rstrip("/").endswith(oip_rest.SUFFIX):
        return OipRestTransport
    return RestTransport


def open_http(config):
    """The factory registered for ``http`` and ``https``: opens ``config.target`` with
    :func:`http_transport`'s class."""
    return http_transport(config.target)(config)


register_transport("http", open_http)
register_transport("https", open_http)
register_transport(oip_grpc.SCHEME, OipGrpcTransport)
register_transport(vertex.SCHEME, VertexTransport)
