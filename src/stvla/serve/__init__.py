"""Serving a policy to a robot: `stvla serve` (server.py), the robot-side client and action queue
(client.py) with its conversion of a robot's formats to a policy's contract (formats.py), and the messages
between them (wire.py). client.py, formats.py and wire.py import no torch."""

from stvla.serve.client import ActionQueue, PolicyClient, ServerError
from stvla.serve.formats import to_contract
from stvla.serve.server import PolicyServer, ServeConfig, serve
from stvla.serve.wire import WireError, pack, unpack

__all__ = ["ActionQueue", "PolicyClient", "PolicyServer", "ServeConfig", "ServerError", "WireError", "pack",
           "serve", "to_contract", "unpack"]
