"""`stvla serve --policy DIR`: a saved policy behind a websocket, for a robot (or `stvla eval --server`).

    stvla serve --policy runs/demo/st/policy                       # 127.0.0.1:8765, no token needed
    stvla serve --policy DIR --host 0.0.0.0 --token_file ~/.stvla-token --device cuda

The conversation (every message msgpack, arrays as (dtype, shape, bytes): stvla.serve.wire):

    server -> client, on connect    {"type": "metadata", "contract": processor.json, "max_message_bytes": N, ...}
    client -> server, every frame   {"type": "step", "observation": {...}, "reset": bool, "infer": bool}
    server -> client, every step    {"type": "result", "actions": (chunk, D) float32 | None, "inference_ms",
                                     "traces": [(L, 2) px, ...], "predicted_trace": (P, 2) px | None}
    server -> client, on bad input  {"type": "error", "error": "one line naming the field"}; the connection goes on

Every observation goes through the policy's own input processor (the one training and `select_action`
use), so the tracker steps on every frame the client sends; `infer` asks for an action chunk on this
frame. Each connection is its own episode (tracker buffer, state history, prompt noise): two robots on
one server never share traces. `GET /healthz` answers 200.

Safe by default: loopback only unless `--host` says otherwise, and then only with a token (checked in
constant time before the websocket opens); messages over a size derived from the contract are refused;
idle connections are closed; every field is checked (keys, shapes, dtypes, finite values, depth in
metres). No message can make the server run code or read a file: there is no pickle anywhere.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import ipaddress
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from stvla.serve.wire import WireError, pack, unpack

PROTOCOL_VERSION = 1


@dataclass
class ServeConfig:
    policy: str = ""  # policy directory (config.json + model.safetensors, as training writes it)
    host: str = "127.0.0.1"  # address to listen on; anything but loopback needs --token_file
    port: int = 8765  # TCP port (0 = any free port)
    token_file: str = ""  # file whose content clients must send as "Authorization: Bearer TOKEN"
    device: str = "cpu"  # torch device the policy runs on: cpu, cuda, cuda:1, mps
    idle_timeout: float = 300.0  # seconds without a message before a connection is closed
    max_message_bytes: int = 0  # largest message accepted; 0 = derived from the policy's contract


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def message_limit(contract: dict[str, Any]) -> int:
    """Bytes a well-formed step can take: every input at 8 bytes an element (float64 allowed), the
    instruction and the msgpack framing, with room to spare."""
    elements = sum(int(np.prod(spec["shape"])) for spec in contract["input_features"].values())
    return int(elements * 8 * 1.25) + 64 * 1024


class Session:
    """One connection's episode: its own input processor (tracker buffer, state history, prompt noise)."""

    def __init__(self, policy: Any):
        self.processor = policy.processor_class(policy.config, policy.name)
        self.processor.reset()
        self.steps = 0


class PolicyServer:
    """The served policy and what its connections share (the weights, and a lock to use them one at a time)."""

    def __init__(self, config: ServeConfig):
        from stvla.devices import torch_device
        from stvla.policies.registry import load_policy

        if not config.policy:
            raise ValueError("stvla serve needs --policy DIR (a saved policy)")
        self.config = config
        self.token = Path(config.token_file).read_text().strip() if config.token_file else ""
        if config.token_file and not self.token:
            raise ValueError(f"--token_file {config.token_file} is empty")
        if not is_loopback(config.host) and not self.token:
            raise ValueError(f"--host {config.host} is reachable from other machines: give --token_file FILE "
                             f"(clients send its content as a bearer token), or serve on 127.0.0.1")
        device = torch_device(config.device)
        self.policy = load_policy(config.policy).to(device)
        self.policy.eval()
        self.contract = self.policy.processor.contract()
        written = Path(config.policy) / "processor.json"  # as training wrote it: with the data's control rate
        fps = json.loads(written.read_text()).get("fps") if written.is_file() else None
        if fps:
            self.contract["fps"] = fps
        from stvla.policies.base import checkpoint_fingerprint

        self.fingerprint = checkpoint_fingerprint(config.policy)  # what a client's results can be keyed on
        self.max_bytes = config.max_message_bytes or message_limit(self.contract)
        self.lock = threading.Lock()
        self.port: int | None = None  # the port listened on, once started
        self.started = threading.Event()
        self._stop: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the websocket side --------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"type": "metadata", "protocol": PROTOCOL_VERSION, "contract": self.contract,
                "checkpoint": self.fingerprint,
                "max_message_bytes": self.max_bytes, "idle_timeout": self.config.idle_timeout}

    def _process_request(self, connection: Any, request: Any) -> Any:
        """Before the websocket opens: /healthz, and the token (a wrong or missing one is refused here)."""
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if self.token:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {self.token}".encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
        return None

    async def _handle(self, websocket: Any) -> None:
        # Steps run one at a time on the event loop: the model is one, and handing each step to a worker
        # thread cost 2 ms of a 15 ms step (bench_serve); other connections wait at most one step.
        session = Session(self.policy)
        await websocket.send(pack(self.metadata()))
        while True:
            try:
                data = await asyncio.wait_for(websocket.recv(), timeout=self.config.idle_timeout)
            except asyncio.TimeoutError:
                await websocket.close(code=1000, reason=f"idle for {self.config.idle_timeout:g} s")
                return
            except Exception:  # the client went away (closed, dropped, reset): its episode ends with it
                return
            try:
                if isinstance(data, str):
                    raise WireError("messages are binary msgpack, not text")
                reply = self.step(session, unpack(data, self.max_bytes))
            except (WireError, ValueError, KeyError, TypeError) as error:
                message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
                reply = {"type": "error", "error": str(message)}
            try:
                await websocket.send(pack(reply))
            except Exception:
                return

    # --- one step ------------------------------------------------------------------------------------
    def step(self, session: Session, message: dict[str, Any]) -> dict[str, Any]:
        """A step message -> its reply (the model is used one call at a time: `lock`, for servers run in a thread)."""
        kind = message.get("type")
        if kind == "reset":
            session.processor.reset()
            session.steps = 0
            return {"type": "result", "actions": None, "inference_ms": 0.0, "traces": [], "predicted_trace": None}
        if kind != "step":
            raise WireError(f"unknown message type {kind!r}: expected 'step' or 'reset'")
        observation = message.get("observation")
        if not isinstance(observation, dict):
            raise WireError("a step needs an 'observation' map")
        started = time.perf_counter()
        with self.lock:
            if message.get("reset"):
                session.processor.reset()
                session.steps = 0
            frame = session.processor.observation_frame(observation)
            actions = None
            self.policy.predicted_trace = None
            if message.get("infer", True):
                actions = self.policy._predict_chunk(frame, session.processor).astype(np.float32)
            predicted = self.policy.predicted_trace
        session.steps += 1
        trace = session.processor.last_trace
        return {"type": "result", "actions": actions, "inference_ms": (time.perf_counter() - started) * 1000,
                "traces": [np.asarray(t.points, np.float32) for t in trace.traces] if trace is not None else [],
                "predicted_trace": None if predicted is None else np.asarray(predicted, np.float32),
                "step": session.steps}

    # --- running -------------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Listen until `stop()`."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self._handle, self.config.host, self.config.port, max_size=self.max_bytes,
                         process_request=self._process_request, ping_interval=20, ping_timeout=20,
                         compression=None) as server:  # deflate of images costs ms and saves little
            self.port = server.sockets[0].getsockname()[1]
            self.started.set()
            await self._stop

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._stop.done():
            self._loop.call_soon_threadsafe(self._stop.set_result, None)

    def start_in_thread(self) -> threading.Thread:
        """Serve from a background thread (tests, benchmarks, `stvla eval --server` against a local policy)."""
        thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True)
        thread.start()
        if not self.started.wait(60):
            raise RuntimeError("the server did not start")
        return thread


def serve(config: ServeConfig) -> None:
    """Run the server until interrupted (the `stvla serve` command)."""
    server = PolicyServer(config)
    where = f"ws://{config.host}:{config.port}"
    print(f"serving {config.policy} ({server.policy.name}) on {where}; health: http://{config.host}:{config.port}/healthz"
          + (" (token required)" if server.token else ""))
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        pass
