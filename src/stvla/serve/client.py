"""The robot side of `stvla serve`: a client, and a queue that turns action chunks into one action per
control step. Imports numpy, msgpack and websockets only (no torch, nothing else of stvla's weight).

    from stvla.serve.client import PolicyClient, ActionQueue

    client = PolicyClient("ws://gpu-box:8765", token=open("token").read().strip())
    actions = ActionQueue(client)                  # "chunk" mode; "async" asks ahead while acting
    actions.reset()                                # a new episode
    while running:
        action = actions.act({"rgb": rgb, "depth": depth_m, "camera.intrinsics": K,
                              "proprio": state, "instruction": "open the window"})

`client.contract` (sent by the server on connect) says which observation keys, shapes and dtypes the
policy reads, its chunk size and how many actions of a chunk to execute. `step` first brings what a robot's
drivers give to that contract (stvla.serve.formats.to_contract): a camera under its dataset name, float or
channels-first RGB, integer depth in millimetres (`depth_scale`), depth (H, W, 1).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from stvla import features as F
from stvla.serve.formats import REALSENSE_DEPTH_SCALE, model_image_size, names_of, to_contract
from stvla.serve.wire import pack, unpack


class ServerError(RuntimeError):
    """The server refused a message (the text is its one-line reason); the connection is still usable."""


class PolicyClient:
    """A connection to `stvla serve`: `step` sends every observation, `infer` asks for an action chunk.

    A dropped connection is re-opened with exponential backoff (`retries` attempts); the server's episode
    state (the tracker's buffer) does not survive it, so the step that found it dropped is sent again as
    the start of an episode, and `reconnects` counts how often that happened.

    Observations are converted to the contract before they are sent (`to_contract`; `depth_scale` metres
    per unit of integer depth); `convert=False` sends them exactly as given.
    """

    def __init__(self, url: str, token: str | None = None, retries: int = 5, backoff_s: float = 0.5,
                 timeout_s: float = 30.0, depth_scale: float = REALSENSE_DEPTH_SCALE, convert: bool = True):
        self.url, self.token = url, token
        self.depth_scale, self.convert = depth_scale, convert
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.reconnects = 0
        self.metadata: dict[str, Any] = {}
        self._socket: Any = None
        self._reset_next = True
        self._connect()

    @property
    def contract(self) -> dict[str, Any]:
        return self.metadata["contract"]

    def _connect(self) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        for attempt in range(self.retries + 1):
            try:
                self._socket = connect(self.url, additional_headers=headers, max_size=None,
                                       open_timeout=self.timeout_s, compression=None)
                self.metadata = unpack(self._socket.recv(timeout=self.timeout_s))
                if self.metadata.get("type") != "metadata":
                    raise ServerError(f"{self.url} did not start with its metadata")
                return
            except InvalidStatus as error:  # refused by the server (a wrong token): retrying will not help
                raise ServerError(f"{self.url} refused the connection: HTTP {error.response.status_code} "
                                  f"{error.response.body.decode(errors='replace').strip()}") from None
            except (OSError, TimeoutError) as error:
                if attempt == self.retries:
                    raise ConnectionError(f"cannot reach {self.url} after {self.retries + 1} attempts: {error}") from None
                time.sleep(self.backoff_s * 2**attempt)

    def reset(self) -> None:
        """Start a new episode: the next step resets the server's episode state (tracker, history)."""
        self._reset_next = True

    def step(self, observation: dict[str, Any], infer: bool = True) -> dict[str, Any]:
        """Send one observation; with `infer`, the reply holds "actions" ((chunk, D) float32). An observation
        that cannot be brought to the contract is a ValueError, before anything is sent."""
        from websockets.exceptions import ConnectionClosed

        if self.convert:
            observation = to_contract(observation, self.contract, self.depth_scale)
        for attempt in range(2):
            message = {"type": "step", "observation": observation, "reset": self._reset_next, "infer": infer}
            try:
                self._socket.send(pack(message))
                reply = unpack(self._socket.recv(timeout=self.timeout_s))
                break
            except (ConnectionClosed, OSError):
                if attempt:
                    raise
                self.reconnects += 1
                self._connect()
                self._reset_next = True  # the new connection is a new episode on the server
        self._reset_next = False
        if reply.get("type") == "error":
            raise ServerError(reply["error"])
        return reply

    def infer(self, observation: dict[str, Any]) -> np.ndarray:
        """The action chunk ((chunk, D) float32) for this observation."""
        return self.step(observation, infer=True)["actions"]

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ActionQueue:
    """One action per control step from a served policy's chunks. Every observation goes to the server
    (its tracker steps on every frame); chunks are asked for in one of two ways:

    - "chunk" (openpi): execute `n_action_steps` actions of a chunk, then ask for the next one on the
      next observation, waiting for it (what `select_action` does locally, action for action);
    - "async" (LeRobot's asynchronous inference): when fewer than `threshold` actions are left, ask for
      the next chunk in the background and keep acting; when it arrives, the actions for the steps
      already taken are dropped and the rest replace the queue. The robot waits only when it runs dry.
    """

    def __init__(self, client: PolicyClient, mode: str = "chunk", n_action_steps: int | None = None,
                 threshold: int | None = None):
        if mode not in ("chunk", "async"):
            raise ValueError(f"mode {mode!r}: expected 'chunk' or 'async'")
        contract = client.contract
        self.client, self.mode = client, mode
        self.n_action_steps = n_action_steps or contract["n_action_steps"]
        self.threshold = threshold if threshold is not None else max(1, self.n_action_steps // 2)
        self.queue: deque[np.ndarray] = deque()
        self.step_index = 0  # control steps taken this episode
        self.last_reply: dict[str, Any] | None = None  # the latest chunk's reply (inference time, LLARVA's path)
        self.last_step: dict[str, Any] = {"traces": []}  # the latest step's reply ("chunk" mode): the traces now
        self._jobs: deque[tuple[dict[str, Any], bool, int]] = deque()
        self._pending: int | None = None  # the step an in-flight chunk was asked at (async mode)
        self._arrived: tuple[int, dict[str, Any]] | None = None
        self._error: BaseException | None = None
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None

    def reset(self) -> None:
        self._drain()
        self.client.reset()
        self.queue.clear()
        self.step_index = 0
        self._pending = self._arrived = None

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        """The action for this control step."""
        if self.mode == "chunk":
            reply = self.client.step(observation, infer=not self.queue)
            self.last_step = reply
            if reply["actions"] is not None:
                self.last_reply = reply
                self.queue.extend(reply["actions"][: self.n_action_steps])
        else:
            self._act_async(observation)
        self.step_index += 1
        return self.queue.popleft()

    # --- asynchronous mode ---------------------------------------------------------------------------
    def _act_async(self, observation: dict[str, Any]) -> None:
        self._take_arrived()
        ask = self._pending is None and len(self.queue) < max(self.threshold, 1)
        if ask:
            self._pending = self.step_index
        self._submit(observation, ask)
        while not self.queue:  # run dry: wait for the chunk in flight
            with self._wake:
                self._wake.wait_for(lambda: self._arrived is not None or self._error is not None)
            self._take_arrived()

    def _take_arrived(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        with self._wake:
            arrived, self._arrived = self._arrived, None
        if arrived is None:
            return
        asked_at, reply = arrived
        self._pending = None
        self.last_reply = reply
        elapsed = self.step_index - asked_at  # steps taken since the observation it was made for
        self.queue = deque(reply["actions"][elapsed: self.n_action_steps + elapsed])

    def _submit(self, observation: dict[str, Any], infer: bool) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, daemon=True)
            self._worker.start()
        with self._wake:
            self._jobs.append((observation, infer, self.step_index))
            self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: bool(self._jobs))
                observation, infer, step = self._jobs[0]
            try:
                reply = self.client.step(observation, infer=infer)
            except BaseException as error:  # handed to the control loop, which raises it
                reply, self._error = None, error
            with self._wake:
                self._jobs.popleft()
                if reply is not None and infer:
                    self._arrived = (step, reply)
                self._wake.notify_all()

    def _drain(self) -> None:
        """Wait until every observation sent has been answered (before an episode ends)."""
        with self._wake:
            self._wake.wait_for(lambda: not self._jobs)


class ServedPolicy:
    """A served policy in the shape of a local one: `reset()` and `select_action(obs)` (an environment
    observation, as stvla.envs gives it, or a robot's in any form the client converts), acting in "chunk"
    mode, which is action for action what the policy's own `select_action` does. `predicted_trace`
    (LLARVA) and `traces` are the server's latest."""

    def __init__(self, client: PolicyClient):
        self.client = client
        self.actions = ActionQueue(client, "chunk")
        contract = client.contract
        inputs = contract["input_features"]
        self.observation_keys = contract["observation_keys"]  # feature -> the env observation key it reads
        self.accepted = {name for names in names_of(contract).values() for name in names}
        self.image_size = model_image_size(contract)  # the model's square: what a simulator renders for it
        self.state_dim = int(inputs[F.STATE]["shape"][0]) if F.STATE in inputs else None
        self.action_dim = int(contract["output_features"][F.ACTION]["shape"][0])
        self.predicted_trace: np.ndarray | None = None
        self.traces: list[np.ndarray] = []

    def reset(self) -> None:
        self.actions.reset()
        self.predicted_trace, self.traces = None, []

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        # Only what the policy reads travels: the contract's inputs, under any name it accepts.
        action = self.actions.act({key: value for key, value in obs.items() if key in self.accepted})
        self.traces = self.actions.last_step["traces"]
        reply = self.actions.last_reply
        self.predicted_trace = reply.get("predicted_trace") if reply else None
        return action
