"""`stvla serve --policy DIR`: a saved policy behind a websocket, for a robot (or `stvla eval --server`).

    stvla serve --policy runs/demo/st/policy                       # 127.0.0.1:8765, no token needed
    stvla serve --policy DIR --host 0.0.0.0 --token_file ~/.stvla-token --device cuda

The conversation (every message msgpack, arrays as (dtype, shape, bytes): stvla.serve.wire):

    server -> client, on connect    {"type": "metadata", "contract": processor.json, "max_message_bytes": N, ...}
    client -> server, every frame   {"type": "step", "observation": {...}, "reset": bool, "infer": bool}
    server -> client, every step    {"type": "result", "actions": (chunk, D) float32 | None, "inference_ms",
                                     "traces": [(L, 2) px, ...], "predicted_trace": (P, 2) px | None}
    server -> client, on bad input  {"type": "error", "error": "one line naming the field", "episode_changed": false};
                                    the connection goes on, and the episode is as it was before that message

Every observation goes through the policy's own input processor (the one training and `select_action`
use), so the tracker steps on every frame the client sends; `infer` asks for an action chunk on this
frame. Each connection is its own episode (tracker buffer, state history, prompt noise): two robots on
one server never share traces. `GET /healthz` answers 200.

Safe by default: loopback only unless `--host` says otherwise, and then only with a token (at least 16
bytes, from a file only its owner can read, checked in constant time before the websocket opens); messages
over a size derived from the contract are refused; idle connections are closed; every field is checked
against the contract (stvla.serve.checks: keys, shapes, dtypes, values finite in float32, plausible depth,
intrinsics and proprio, booleans, printable instructions of bounded length). No message can make the server
run code or read a file: there is no pickle anywhere.

One client cannot hurt another: at most `--max_connections` at once (one more is refused: HTTP 503, or
closed with 1013 "server full"); each connection's memory is bounded (at most 2 messages queued, and its
socket is not read while `WRITE_LIMIT` bytes of replies or pongs wait unread); each may send at most
`--max_steps_per_second` (more wait); steps run one at a time, those of connections that read their replies
before sending again first, then round the waiting connections, oldest turn first (`FairTurns`), so a flood
delays another's step by about one step. A step is
a transaction: checked whole, run on the episode, and the episode restored when anything fails. Each
connection embeds its own instructions (off the event loop, cached per connection), so none can time
another's. The model and the text encoder are warmed up before the first connection is accepted. Every
failure is a one-line error of bounded size that never repeats what was sent; no version banner is sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hmac
import ipaddress
import itertools
import json
import math
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from stvla import features as F
from stvla.serve import checks
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
    max_connections: int = 16  # connections served at once; one more is refused with "server full"
    max_steps_per_second: float = 100.0  # messages a connection may send per second (a burst of as many); more wait; 0 = no limit

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535 (0 = any free port), got {self.port}")
        if not (math.isfinite(self.idle_timeout) and self.idle_timeout > 0):
            raise ValueError(f"--idle_timeout must be a positive number of seconds, got {self.idle_timeout}")
        if self.max_message_bytes < 0:
            raise ValueError(f"--max_message_bytes must be >= 0 (0 = from the policy's contract), got "
                             f"{self.max_message_bytes}")
        if self.max_connections < 1:
            raise ValueError(f"--max_connections must be >= 1, got {self.max_connections}")
        if not (math.isfinite(self.max_steps_per_second) and self.max_steps_per_second >= 0):
            raise ValueError(f"--max_steps_per_second must be a number >= 0 (0 = no limit), got "
                             f"{self.max_steps_per_second}")


WRITE_LIMIT = 256 * 1024  # bytes of replies (and pongs) a connection may leave unread before it is no longer read
MAX_QUEUED_MESSAGES = 2  # messages received and not yet answered, per connection, before it is no longer read
SESSION_EMBEDDINGS = 16  # instructions' embeddings a connection keeps (its own; the oldest goes first)
NEW_INSTRUCTIONS_PER_SECOND = 2.0  # instructions a connection may have embedded a second (bursts of 4); more wait
MAX_ERROR_CHARS = 300  # the longest error text sent
MIN_TOKEN_BYTES = 16  # the shortest token accepted
WARM_UP_INSTRUCTIONS = 16  # instructions of the longest kind embedded before the first connection
FRAME_RATES = {"frames": (2000.0, 4000.0), "pings": (10.0, 20.0)}  # websocket frames a client may send: a second, burst
log = logging.getLogger("stvla.serve")


class PolicyFailure(RuntimeError):
    """The model failed on a frame that passed every check (args: the error's type name, its one line)."""


def read_token(path: str) -> str:
    """The token in `path`: refused when others can read the file, when shorter than MIN_TOKEN_BYTES or with
    whitespace inside (the trailing line break is not part of it)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--token_file {path} is not a file")
    if os.name == "posix" and file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"--token_file {path} can be read by other users: chmod 600 {path}")
    token = file.read_text().strip()
    if not token:
        raise ValueError(f"--token_file {path} is empty")
    if any(c.isspace() for c in token):
        raise ValueError(f"--token_file {path}: the token has whitespace inside it")
    if len(token.encode()) < MIN_TOKEN_BYTES:
        raise ValueError(f"--token_file {path}: the token is shorter than {MIN_TOKEN_BYTES} bytes (e.g. "
                         f"`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def one_line(text: object) -> str:
    """An error as sent: one line, at most MAX_ERROR_CHARS."""
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


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
    """One connection's episode: its own input processor (tracker buffer, state history, prompt noise), its
    own instructions' embeddings, its use of the model lately and its message allowance."""

    def __init__(self, policy: Any, steps_per_second: float = 100.0):
        self.processor = policy.processor_class(policy.config, policy.name)
        self.processor.reset()
        self.processor.embedder = self.embedded
        self.steps = 0
        self.connection: Any = None  # the websocket, while connected
        self.embeddings: OrderedDict[str, np.ndarray] = OrderedDict()  # this connection's, never shared
        self.served_at = -math.inf  # when this connection's latest turn of the model began
        self.pipelined = False  # whether its latest message came before it had its previous reply
        self.rate = float(steps_per_second)
        self.allowance, self.allowance_at = self.rate, time.monotonic()  # token bucket of messages
        self.embedding_debt_s = 0.0  # how long this connection waits (after its reply) for its new instructions
        self.embedded_at = time.monotonic() - 4 / NEW_INSTRUCTIONS_PER_SECOND

    async def allowed(self) -> None:
        """Wait until this connection may send another message (at most `rate` a second, bursts of `rate`)."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.allowance = min(self.rate, self.allowance + (now - self.allowance_at) * self.rate)
        self.allowance_at = now
        if self.allowance < 1:
            await asyncio.sleep((1 - self.allowance) / self.rate)
            self.allowance, self.allowance_at = 1.0, time.monotonic()
        self.allowance -= 1

    def embedding(self) -> None:
        """Charge a new instruction: past the allowance, the connection waits after its reply."""
        now = time.monotonic()
        period = 1 / NEW_INSTRUCTIONS_PER_SECOND
        self.embedded_at = max(self.embedded_at, now - 4 * period) + period
        self.embedding_debt_s = max(0.0, self.embedded_at - now)

    def close(self) -> None:
        """The connection ended: its episode and embeddings are let go at once (the processor's embedder
        points back here, a cycle that would otherwise wait for the garbage collector)."""
        self.processor.embedder = None
        self.embeddings.clear()
        self.connection = None

    def missing_prompts(self, instruction: str) -> list[str]:
        return [p for p in self.processor.language_prompts(instruction) if p not in self.embeddings]

    def keep(self, prompts: list[str], embeddings: Any) -> None:
        for prompt, embedding in zip(prompts, embeddings):
            self.embeddings[prompt] = np.asarray(embedding, np.float32)
        while len(self.embeddings) > SESSION_EMBEDDINGS:
            self.embeddings.popitem(last=False)

    def embedded(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """The processor's embedder: this connection's own embeddings (computed here only if not ahead)."""
        from stvla.policies.text import shared_encoder

        missing = list(dict.fromkeys(p for p in prompts if p not in self.embeddings))
        if missing:
            self.keep(missing, shared_encoder().encode(missing).numpy())
        found = {p: self.embeddings[p] for p in prompts}
        for prompt in found:
            self.embeddings.move_to_end(prompt)
        return found


class FairTurns:
    """The model's turns, one step at a time: when several connections wait, those that wait for their
    replies before sending again go before those that send without reading (`Session.pipelined`), and among
    them the one whose latest turn is oldest first: a round robin, so a flood delays another's step by about
    one step and no waiting connection is passed over twice.

    A turn is taken without waiting when nobody holds one; otherwise the waiter is queued, and a finished
    turn hands over after `HANDOVER_S` (only when others wait), so that steps whose messages arrived during
    the last step are read and queued before the choice is made (made then, on the connections' state then)."""

    HANDOVER_S = 0.001  # between a finished turn and the choice of the next, when several wait

    def __init__(self) -> None:
        self._waiting: list[tuple[Session, int, asyncio.Future]] = []
        self._order = itertools.count()
        self._held = False

    async def take(self, session: Session) -> None:
        if not self._held:
            self._held = True
            session.served_at = time.monotonic()
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((session, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed the turn as it was cancelled: pass it on
                self.give(session)
            raise

    def give(self, session: Session) -> None:
        if not self._waiting:
            self._held = False
            return
        asyncio.get_running_loop().call_later(self.HANDOVER_S, self._hand_over)

    def _hand_over(self) -> None:
        while self._waiting:
            chosen = min(self._waiting, key=lambda w: (w[0].pipelined, w[0].served_at, w[1]))
            self._waiting.remove(chosen)
            session, _, future = chosen
            if not future.done():
                session.served_at = time.monotonic()
                future.set_result(None)
                return
        self._held = False


class PolicyServer:
    """The served policy and what its connections share (the weights, and a lock to use them one at a time)."""

    def __init__(self, config: ServeConfig):
        from stvla.devices import torch_device
        from stvla.policies.registry import load_policy

        if not config.policy:
            raise ValueError("stvla serve needs --policy DIR (a saved policy)")
        self.config = config
        self.token = read_token(config.token_file) if config.token_file else ""
        if not is_loopback(config.host) and not self.token:
            raise ValueError(f"--host {config.host} is reachable from other machines: give --token_file FILE "
                             f"(clients send its content as a bearer token), or serve on 127.0.0.1")
        device = torch_device(config.device)
        self.policy = load_policy(config.policy).to(device)
        self.policy.check_can_act(config.policy)
        self.policy.eval()
        from stvla.policies.processor import CONTRACT_FILE, checked_contract

        self.contract = checked_contract(Path(config.policy) / CONTRACT_FILE, self.policy.processor.contract(),
                                         required=True)
        from stvla.policies.base import checkpoint_fingerprint

        self.fingerprint = checkpoint_fingerprint(config.policy)  # what a client's results can be keyed on
        self.max_bytes = config.max_message_bytes or message_limit(self.contract)
        self.lock = threading.Lock()
        self.turns = FairTurns()
        self.sessions: set[Session] = set()
        self.text_worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stvla-serve-text")
        self.ready = False
        self._trim_pending = False
        self.warm_up()
        self.port: int | None = None  # the port listened on, once started
        self.started = threading.Event()
        self._stop: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- warming up ----------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the text encoder and run the model once on a made-up frame (a throwaway episode), so that no
        connection waits for either; `/healthz` answers and connections are accepted only after."""
        from stvla.geometry import intrinsics_from_fov

        session = Session(self.policy, 0)
        observation: dict[str, Any] = {F.OBS_INSTRUCTION: "warm up"}
        for feature, spec in self.policy.processor.sent_features().items():
            shape, dtype = spec["shape"], np.dtype(spec["dtype"])
            if feature == F.DEPTH:
                value = np.ones(shape, dtype)
            elif feature == F.INTRINSICS:
                height, width = self.policy.processor.sent_features()[F.RGB]["shape"][:2]
                value = intrinsics_from_fov(60.0, height, width).astype(dtype)
            else:
                value = np.zeros(shape, dtype)
            observation[F.observation_key(feature)] = value
        self.step(session, {"type": "step", "observation": observation, "infer": True})
        from stvla.policies.text import MAX_INSTRUCTION_CHARS, shared_encoder

        # Instructions of the longest kind, a few: the memory the text encoder settles at is taken now, so
        # a client sending new ones later does not grow the server (bench_serve: abuse).
        rng = np.random.default_rng(0)
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8)
        for _ in range(WARM_UP_INSTRUCTIONS):
            longest = rng.choice(letters, MAX_INSTRUCTION_CHARS).tobytes().decode()
            self.text_worker.submit(shared_encoder().encode, [longest]).result()
        session.close()
        self.ready = True

    # --- the websocket side --------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"type": "metadata", "protocol": PROTOCOL_VERSION, "contract": self.contract,
                "checkpoint": self.fingerprint, "max_message_bytes": self.max_bytes,
                "idle_timeout": self.config.idle_timeout, "max_steps_per_second": self.config.max_steps_per_second}

    def _process_request(self, connection: Any, request: Any) -> Any:
        """Before the websocket opens: /healthz, the token (a wrong, missing or doubled one is refused here)
        and the connection cap. Never raises: a request it cannot read is a 400."""
        try:
            if request.path == "/healthz":
                if not self.ready:
                    return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "warming up\n")
                return connection.respond(HTTPStatus.OK, "ok\n")
            if self.token:
                sent = request.headers.get_all("Authorization")
                if len(sent) > 1:
                    return connection.respond(HTTPStatus.BAD_REQUEST, "one Authorization header, please\n")
                if not hmac.compare_digest((sent[0] if sent else "").encode(), f"Bearer {self.token}".encode()):
                    return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
            if len(self.sessions) >= self.config.max_connections:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                          f"server full: {self.config.max_connections} connections\n")
        except Exception:  # noqa: BLE001 - a request this cannot read is the client's error, never a 500
            return connection.respond(HTTPStatus.BAD_REQUEST, "bad request\n")
        return None

    async def _handle(self, websocket: Any) -> None:
        # Steps run one at a time on the event loop (the model is one, and handing each step to a worker
        # thread cost 2 ms of a 15 ms step: bench_serve), in turns chosen by FairTurns.
        if len(self.sessions) >= self.config.max_connections:  # two handshakes raced for the last place
            await websocket.close(code=1013, reason=f"server full: {self.config.max_connections} connections")
            return
        session = Session(self.policy, self.config.max_steps_per_second)
        session.connection = websocket
        self.sessions.add(session)
        try:
            await websocket.send(pack(self.metadata()))
            while True:
                # A robot sends a step, reads its reply, sends the next; one whose next message is already
                # here sends without reading: its steps wait behind everyone else's (FairTurns).
                session.pipelined = len(getattr(websocket.recv_messages, "frames", ())) > 0
                try:
                    data = await asyncio.wait_for(websocket.recv(), timeout=self.config.idle_timeout)
                except asyncio.TimeoutError:
                    await websocket.close(code=1000, reason=f"idle for {self.config.idle_timeout:g} s")
                    return
                except Exception as error:  # noqa: BLE001 - the client went away: its episode ends with it
                    error.__traceback__ = None  # websockets keeps the error: its traceback would keep this frame
                    return
                await session.allowed()
                reply = await self._answer(session, data)
                await websocket.send(pack(reply))
                if session.embedding_debt_s > 0:  # new instructions beyond the allowance: this connection waits
                    await asyncio.sleep(session.embedding_debt_s)
                    session.embedding_debt_s = 0.0
        except Exception as error:  # noqa: BLE001 - the link broke while sending: the episode ends with it
            error.__traceback__ = None
            return
        finally:
            self.sessions.discard(session)
            session.close()
            self._trim_soon()

    def _trim_soon(self, delay_s: float = 2.0) -> None:
        """Hand freed memory back to the system a little after a connection ends (at most once per `delay_s`):
        what an attacker made the server allocate is returned when it leaves."""
        if self._trim_pending:
            return
        self._trim_pending = True

        def trim() -> None:
            self._trim_pending = False
            release_memory()

        asyncio.get_running_loop().call_later(delay_s, trim)

    async def _answer(self, session: Session, data: Any) -> dict[str, Any]:
        """One message's reply, in this connection's turn; any failure is an error reply (never a close)."""
        await self.turns.take(session)
        try:
            if isinstance(data, str):
                raise WireError("messages are binary msgpack, not text")
            message = unpack(data, self.max_bytes)
            if message.get("type") == "step":  # a new instruction is embedded off the event loop
                observation, *_ = checks.check_message(message)
                instruction = observation.get(F.OBS_INSTRUCTION, observation.get(F.TASK))
                if isinstance(instruction, str):
                    from stvla.policies.text import check_instruction, shared_encoder

                    missing = session.missing_prompts(check_instruction(instruction, "observation 'instruction'"))
                    if missing:
                        session.embedding()
                        embedded = await asyncio.get_running_loop().run_in_executor(
                            self.text_worker, shared_encoder().encode, missing)
                        session.keep(missing, embedded.numpy())
            return self.step(session, message)
        except Exception as error:  # noqa: BLE001 - every failure is an error reply; the episode did not move
            return self.error_reply(error)
        finally:
            self.turns.give(session)

    @staticmethod
    def error_reply(error: BaseException) -> dict[str, Any]:
        if isinstance(error, PolicyFailure):  # the frame passed the checks; what the model said stays in the log
            log.warning("a step failed in the policy: %s: %s", *error.args)
            text = f"the policy failed on this frame ({error.args[0]})"
        elif isinstance(error, (WireError, ValueError, KeyError, TypeError)):
            text = error.args[0] if isinstance(error, KeyError) and error.args else error
        else:  # not the input's fault as far as the checks can tell
            log.warning("a step failed: %s", one_line(f"{type(error).__name__}: {error}"))
            text = f"the server failed on this frame ({type(error).__name__})"
        return {"type": "error", "error": one_line(text), "episode_changed": False}

    # --- one step ------------------------------------------------------------------------------------
    def step(self, session: Session, message: dict[str, Any]) -> dict[str, Any]:
        """A step message -> its reply (the model is used one call at a time: `lock`, for servers run in a
        thread). A transaction: the message is checked whole against the contract, the episode is stepped,
        and when anything fails the episode is put back as it was and the error raised."""
        kind = message.get("type")
        if kind == "reset":
            session.processor.reset()
            session.steps = 0
            return {"type": "result", "actions": None, "inference_ms": 0.0, "traces": [], "predicted_trace": None}
        if kind != "step":
            raise WireError("unknown message type: expected 'step' or 'reset'")
        observation, reset, infer = checks.check_message(message)
        checks.check_observation(observation, session.processor)
        started = time.perf_counter()
        with self.lock:
            snapshot = session.processor.snapshot()
            try:
                if reset:
                    session.processor.reset()
                frame = session.processor.observation_frame(observation, checked=True)  # checks above
                actions = None
                self.policy.predicted_trace = None
                if infer:
                    try:
                        actions = self.policy._predict_chunk(frame, session.processor).astype(np.float32)
                    except Exception as error:  # noqa: BLE001 - the frame passed every check: the model's failure
                        raise PolicyFailure(type(error).__name__, one_line(error)) from None
                    if not np.isfinite(actions).all():
                        raise PolicyFailure("non-finite actions", "")
                predicted = self.policy.predicted_trace
            except BaseException:
                session.processor.restore(snapshot)
                raise
        session.steps = 1 if reset else session.steps + 1
        trace = session.processor.last_trace
        return {"type": "result", "actions": actions, "inference_ms": (time.perf_counter() - started) * 1000,
                "traces": [np.asarray(t.points, np.float32) for t in trace.traces] if trace is not None else [],
                "predicted_trace": None if predicted is None else np.asarray(predicted, np.float32),
                "step": session.steps}

    # --- running -------------------------------------------------------------------------------------
    async def serve(self, on_listening: Callable[[int], None] | None = None) -> None:
        """Listen until `stop()`; `on_listening(port)` once the port is bound (the one chosen, with port 0)."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self._handle, self.config.host, self.config.port, max_size=self.max_bytes,
                         process_request=self._process_request, ping_interval=20, ping_timeout=20,
                         compression=None,  # deflate of images costs ms and saves little
                         server_header=None, max_queue=MAX_QUEUED_MESSAGES, write_limit=WRITE_LIMIT,
                         create_connection=bounded_connection(2 * self.config.max_connections + 8),
                         logger=quiet_logger()) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.started.set()
            if on_listening is not None:
                on_listening(self.port)
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


def release_memory() -> None:
    """What a connection left behind back to the system: the garbage collector's pass first (websockets'
    closed connections hold reference cycles: errors with tracebacks, futures), then glibc's malloc_trim
    for the freed heap (nothing elsewhere). The pass takes ~2 ms: what the server loaded is frozen out of it."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def bounded_connection(max_open: int = 1 << 30) -> type:
    """websockets' server connection that stops reading a client while its replies wait unread: pongs to a
    flood of pings (answered by websockets itself, without backpressure) or replies to steps sent without
    reading. Reading resumes when the client has read them; memory stays bounded either way. At most
    `max_open` TCP connections are kept at once, handshakes under way included; more are dropped at once."""
    open_now = [0]
    from websockets.asyncio.server import ServerConnection
    from websockets.frames import Frame, Opcode

    class BoundedConnection(ServerConnection):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            open_now[0] += 1
            if open_now[0] > max_open:
                transport.abort()
            self._holds: set[str] = set()
            self._budgets = {kind: [float(burst), time.monotonic()] for kind, (_, burst) in FRAME_RATES.items()}
            self.recv_messages.pause = lambda: self._hold("queue", True)
            self.recv_messages.resume = lambda: self._hold("queue", False)

        def connection_lost(self, exc: Exception | None) -> None:
            open_now[0] -= 1
            super().connection_lost(exc)

        def process_event(self, event: Any) -> None:
            if isinstance(event, Frame):  # frames, and pings above all, cost the event loop: at most FRAME_RATES
                self._spend("frames")
                if event.opcode is Opcode.PING:
                    self._spend("pings")
            super().process_event(event)

        def _spend(self, kind: str, cost: float = 1.0) -> None:
            rate, burst = FRAME_RATES[kind]
            budget = self._budgets[kind]
            now = time.monotonic()
            budget[0], budget[1] = min(burst, budget[0] + (now - budget[1]) * rate) - cost, now
            if budget[0] < 0 and kind not in self._holds:  # not read again until the budget is back
                self._hold(kind, True)
                self.loop.call_later(-budget[0] / rate, self._release, kind)

        def _release(self, kind: str) -> None:
            self._spend(kind, 0.0)
            if self._budgets[kind][0] < 0:  # spent more meanwhile (the rest of the chunk read): wait on
                self.loop.call_later(-self._budgets[kind][0] / FRAME_RATES[kind][0], self._release, kind)
            else:
                self._hold(kind, False)

        def _hold(self, why: str, on: bool) -> None:
            before = bool(self._holds)
            (self._holds.add if on else self._holds.discard)(why)
            if bool(self._holds) != before:
                (self.transport.pause_reading if self._holds else self.transport.resume_reading)()

        def pause_writing(self) -> None:
            super().pause_writing()
            self._hold("write", True)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._hold("write", False)

    return BoundedConnection


def quiet_logger() -> logging.Logger:
    """websockets' log without tracebacks: a failed handshake or a dropped client is one line, if any."""
    logger = logging.getLogger("stvla.serve.websockets")

    class OneLine(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            return True

    if not logger.filters:
        logger.addFilter(OneLine())
    return logger


def serve(config: ServeConfig) -> None:
    """Run the server until interrupted (the `stvla serve` command)."""
    server = PolicyServer(config)
    # What is loaded now (model, encoder, libraries) lives as long as this process: kept out of the garbage
    # collector's passes, so that the pass after a connection leaves (`release_memory`) takes milliseconds.
    gc.collect()
    gc.freeze()

    def announce(port: int) -> None:
        print(f"serving {config.policy} ({server.policy.name}) on ws://{config.host}:{port}; health: "
              f"http://{config.host}:{port}/healthz" + (" (token required)" if server.token else ""), flush=True)
    try:
        asyncio.run(server.serve(announce))
    except KeyboardInterrupt:
        pass
