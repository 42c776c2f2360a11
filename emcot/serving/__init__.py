"""Serving a policy to robots: an openpi-compatible websocket server (`PolicyServer`), its
msgpack-numpy wire format (`protocol`) and the observation-dict protocol (`ObservationSpec`)."""

from emcot.serving.metadata import ServerConfig, SessionConfig, server_metadata
from emcot.serving.observations import ObservationSpec
from emcot.serving.protocol import ProtocolError, packb, unpackb
from emcot.serving.server import PolicyServer, ServerStats

__all__ = [
    "ObservationSpec",
    "PolicyServer",
    "ProtocolError",
    "ServerConfig",
    "ServerStats",
    "SessionConfig",
    "packb",
    "server_metadata",
    "unpackb",
]
