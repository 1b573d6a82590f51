"""`stvla serve` and its client: the messages, the contract on connect, one episode per connection,
the refusals that keep it safe, and the proof that a served policy acts exactly as the local one."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from conftest import responsive
from stvla import features as F
from stvla.envs import make_env
from stvla.evaluate import EvalConfig, evaluate
from stvla.policies.image_encoder import ImageEncoderConfig
from stvla.policies.registry import make_policy
from stvla.policies.trunk import TrunkConfig
from stvla.policies.vla import VLAConfig
from stvla.serve import ActionQueue, PolicyClient, PolicyServer, ServeConfig, ServerError, WireError, pack, unpack
from stvla.traces import TraceConfig
from stvla.traces.selection import SelectionConfig

TINY = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                 trunk=TrunkConfig(width=32, depth=2, heads=2), chunk_size=4, n_action_steps=2)


@pytest.fixture(scope="module")
def tiny_tracevla(tmp_path_factory):
    """A tiny random tracevla policy (adaptive traces: drawn within a few frames of motion; a chunk of 4
    with 2 executed), its weight matrices scaled up so that its actions change with what it sees (at the
    initial scale a random model picks the same action bins whatever its input)."""
    config = make_policy("tracevla").config
    config.vla = dataclasses.replace(TINY, two_images=True)
    config.traces = TraceConfig(selection=SelectionConfig(adaptive=True))
    policy = responsive(make_policy("tracevla", config))
    return policy.save_pretrained(tmp_path_factory.mktemp("served") / "policy")


@pytest.fixture(scope="module")
def server(tiny_tracevla):
    served = PolicyServer(ServeConfig(policy=str(tiny_tracevla), port=0, idle_timeout=30))
    served.start_in_thread()
    yield served
    served.stop()


def observations(seed: int, steps: int) -> list[dict]:
    env = make_env("reach-v3", image_size=64)
    obs, _ = env.reset(seed=seed)
    frames = []
    action = np.random.default_rng(seed).uniform(-1, 1, 4)  # one direction: the arm moves, the tracker sees it
    for _ in range(steps):
        frames.append({key: obs[key] for key in (F.OBS_RGB, F.OBS_DEPTH, F.OBS_INTRINSICS, F.OBS_STATE,
                                                  F.OBS_INSTRUCTION)})
        obs, *_ = env.step(action)
    env.close()
    return frames


def test_messages_carry_arrays_and_refuse_everything_else():
    message = {"rgb": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "depth": np.float32(1.5), "task": "open"}
    back = unpack(pack(message))
    assert np.array_equal(back["rgb"], message["rgb"]) and back["rgb"].dtype == np.uint8 and back["depth"] == 1.5
    with pytest.raises(WireError, match="dtype object"):
        pack({"x": np.array([object()])})
    for bad, reason in [(pack({"x": {"__ndarray__": ["object", [1], b"x"]}}), "dtype 'object' is not accepted"),
                        (pack({"x": {"__ndarray__": ["float32", [3], b"xx"]}}), "needs 12 bytes, got 2"),
                        (pack({"x": 1})[:-1] + b"\xc1", "not a msgpack message"), (b"\x93\x01\x02\x03", "a map"),
                        (pack({"x": b"a" * 100}), "over the limit of 50")]:
        with pytest.raises(WireError, match=reason):
            unpack(bad, max_bytes=50)


def test_the_client_imports_without_torch():
    code = "import sys, stvla.serve.client; assert 'torch' not in sys.modules, 'torch was imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_connect_sends_the_contract_and_every_connection_is_its_own_episode(server, tiny_tracevla):
    from stvla.policies.registry import load_policy

    assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz").read() == b"ok\n"
    url = f"ws://127.0.0.1:{server.port}"
    first, second = PolicyClient(url), PolicyClient(url)
    contract = json.loads((tiny_tracevla / "processor.json").read_text())
    assert first.contract == contract and first.metadata["max_message_bytes"] > 64 * 64 * 3
    # Interleaved episodes on two connections: each gets what a local policy fed only its frames gets.
    a, b = observations(1, 20), observations(2, 20)
    replies = {"a": [], "b": []}
    for frame_a, frame_b in zip(a, b):
        replies["a"].append(first.step(frame_a, infer=True))
        replies["b"].append(second.step(frame_b, infer=True))
    local = load_policy(tiny_tracevla)
    for name, frames in (("a", a), ("b", b)):
        local.reset()
        for frame, reply in zip(frames, replies[name]):
            processed = local.processor.observation_frame(frame)
            assert np.array_equal(reply["actions"], local._predict_chunk(processed))
            traces = [t.points for t in local.processor.last_trace.traces]
            assert len(reply["traces"]) == len(traces) and all(map(np.array_equal, reply["traces"], traces))
    def same(x: list, y: list) -> bool:
        return len(x) == len(y) and all(map(np.array_equal, x, y))

    assert any(reply["traces"] for reply in replies["a"])  # traces were drawn, and they are each episode's own
    assert not all(same(x["traces"], y["traces"]) for x, y in zip(replies["a"], replies["b"]))
    first.close(), second.close()


def test_bad_input_is_answered_and_the_connection_goes_on(server):
    client = PolicyClient(f"ws://127.0.0.1:{server.port}", convert=False)  # the server's own refusals
    good = observations(3, 1)[0]
    cases = [({k: v for k, v in good.items() if k != F.OBS_STATE}, "proprio"),
             ({**good, F.OBS_RGB: good[F.OBS_RGB][:32]}, r"shape \[32, 64, 3\]"),
             ({**good, F.OBS_STATE: np.full(4, np.nan)}, "non-finite"),
             ({**good, F.OBS_DEPTH: good[F.OBS_DEPTH] * 1000}, "looks like millimetres"),
             ({**good, F.OBS_RGB: good[F.OBS_RGB].astype(np.float32)}, "must be uint8"),
             ({**good, F.OBS_INSTRUCTION: 3}, "must be a non-empty string")]
    for observation, reason in cases:
        with pytest.raises(ServerError, match=reason):
            client.step(observation)
    assert client.step(good)["actions"].shape == (4, 4)  # still serving, on the same connection
    client.close()


def test_tokens_and_addresses(tiny_tracevla, tmp_path, capsys):
    from stvla.cli import main

    with pytest.raises(ValueError, match="--host 0.0.0.0 is reachable from other machines: give --token_file"):
        PolicyServer(ServeConfig(policy=str(tiny_tracevla), host="0.0.0.0"))
    assert main(["serve", "--policy", str(tiny_tracevla), "--host", "0.0.0.0"]) == 2  # one line, no traceback
    assert "give --token_file" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("s3cret-s3cret-s3cret\n")
    token.chmod(0o600)
    guarded = PolicyServer(ServeConfig(policy=str(tiny_tracevla), port=0, token_file=str(token)))
    guarded.start_in_thread()
    url = f"ws://127.0.0.1:{guarded.port}"
    for wrong in (None, "guess"):
        with pytest.raises(ServerError, match="refused the connection: HTTP 401"):
            PolicyClient(url, token=wrong, retries=0)
    with PolicyClient(url, token="s3cret-s3cret-s3cret") as client:
        assert client.step(observations(4, 1)[0])["actions"].shape == (4, 4)
    guarded.stop()


def test_served_eval_equals_local_eval_episode_by_episode(server, tiny_tracevla, tmp_path):
    common = dict(tasks="pick-place-v3", episodes=2, max_steps=12, workers=1, videos=1)
    local = evaluate(EvalConfig(policy=str(tiny_tracevla), out=str(tmp_path / "local"), **common), progress=False)
    served = evaluate(EvalConfig(server=f"ws://127.0.0.1:{server.port}", out=str(tmp_path / "served"), **common),
                      progress=False)
    # The same outcome, and the same actions: the end effector ends where it ended locally, to the bit.
    fields = ("task", "attempt", "seed", "success", "steps", "near_object", "grasped", "final_ee_position")
    assert [{k: e[k] for k in fields} for e in served["episodes"]] == [{k: e[k] for k in fields} for e in local["episodes"]]
    assert local["episodes"][0]["final_ee_position"] != local["episodes"][1]["final_ee_position"]
    # The local run measured its traces (eval_info: step share, pixel share, sensitivity); the served cannot.
    assert 0 <= local["overall"]["trace_step_share"] <= 1 and served["overall"]["trace_step_share"] is None
    assert json.loads((tmp_path / "served" / "resume_key.json").read_text())["policy"] == \
        json.loads((tmp_path / "local" / "resume_key.json").read_text())["policy"]


def test_action_queue_modes_act_from_chunks(server):
    client = PolicyClient(f"ws://127.0.0.1:{server.port}")
    frames = observations(5, 9)
    chunked = ActionQueue(client, "chunk")
    chunked.reset()
    actions = [chunked.act(frame) for frame in frames]
    assert len(actions) == 9 and all(a.shape == (4,) and np.isfinite(a).all() for a in actions)
    ahead = ActionQueue(client, "async", threshold=1)
    ahead.reset()
    more = [ahead.act(frame) for frame in frames]
    assert len(more) == 9 and all(a.shape == (4,) and np.isfinite(a).all() for a in more)
    assert np.array_equal(more[0], actions[0])  # the first chunk is asked for, and waited on, alike
    ahead.reset()
    client.close()


def test_oversized_and_idle_connections_are_closed_and_a_dropped_link_reconnects(tiny_tracevla):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    served = PolicyServer(ServeConfig(policy=str(tiny_tracevla), port=0, idle_timeout=1.0))
    served.start_in_thread()
    url = f"ws://127.0.0.1:{served.port}"
    with connect(url, max_size=None) as websocket:
        limit = unpack(websocket.recv())["max_message_bytes"]
        websocket.send(b"\x00" * (limit + 1))
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=10)
        assert closed.value.rcvd.code == 1009  # "message too big", before it is read
    with connect(url) as websocket:
        websocket.recv()
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=10)  # nothing sent for 1 s: the server closes
        assert "idle" in closed.value.rcvd.reason

    frames = observations(6, 2)
    client = PolicyClient(url, backoff_s=0.2)
    client.step(frames[0])
    port = served.port
    served.stop()  # the link drops; a server comes back on the same address
    time.sleep(0.5)
    again = PolicyServer(ServeConfig(policy=str(tiny_tracevla), port=port))
    again.start_in_thread()
    assert client.step(frames[1])["actions"].shape == (4, 4)
    assert client.reconnects == 1
    client.close()
    again.stop()


def test_a_trace_tokens_policy_serves_as_it_acts_locally(tmp_path):
    """Trace tokens (3D: the served connection keeps each point's depth as the local policy does): the same
    episodes, to the bit, through the server."""
    config = make_policy("tracetokens").config
    config.vla = dataclasses.replace(TINY, trace_tokens=True)
    config.traces = TraceConfig(selection=SelectionConfig(adaptive=True))
    policy_dir = responsive(make_policy("tracetokens", config)).save_pretrained(tmp_path / "policy")
    served = PolicyServer(ServeConfig(policy=str(policy_dir), port=0, idle_timeout=30))
    served.start_in_thread()
    try:
        common = dict(tasks="reach-v3", episodes=1, max_steps=24, workers=1, videos=0)
        local = evaluate(EvalConfig(policy=str(policy_dir), out=str(tmp_path / "local"), **common), progress=False)
        remote = evaluate(EvalConfig(server=f"ws://127.0.0.1:{served.port}", out=str(tmp_path / "served"), **common),
                          progress=False)
    finally:
        served.stop()
    assert remote["episodes"][0]["final_ee_position"] == local["episodes"][0]["final_ee_position"]
    assert local["overall"]["trace_step_share"] > 0  # the episode had traces for the tokens to carry


def robot_formats(frame: dict, names: dict[str, str]) -> tuple[dict, dict]:
    """One env observation as two robot drivers might give it, and the canonical observation they stand for:
    depth as uint16 millimetres (H, W, 1) (canonical: those millimetres in metres), RGB as floats
    channels-first in [0, 1] or in [0, 255], under the names in `names` (env name -> the name sent)."""
    millimetres = np.rint(frame[F.OBS_DEPTH] * 1000).astype(np.uint16)
    canonical = {**frame, F.OBS_DEPTH: (millimetres.astype(np.float64) * 0.001).astype(np.float32)}
    unit = {**frame, F.OBS_RGB: np.moveaxis(frame[F.OBS_RGB] / np.float32(255), -1, 0),
            F.OBS_DEPTH: millimetres[..., None]}
    whole = {**frame, F.OBS_RGB: frame[F.OBS_RGB].astype(np.float32), F.OBS_DEPTH: canonical[F.OBS_DEPTH][..., None]}
    rename = lambda obs: {names.get(key, key): value for key, value in obs.items()}  # noqa: E731
    return canonical, {"unit": rename(unit), "whole": rename(whole)}


def test_a_robots_own_formats_get_the_actions_of_the_canonical_ones(tmp_path):
    """A policy trained on a dataset with its own names (observation.images.front, ...): clients sending
    uint16 millimetre depth (H, W, 1), float channels-first RGB and the dataset's names get, to the bit,
    the actions (and traces) of one sending the canonical formats under the environment's names."""
    from stvla.policies.processor import CameraConfig

    config = make_policy("tracevla").config
    config.vla = dataclasses.replace(TINY, two_images=True)
    config.traces = TraceConfig(selection=SelectionConfig(adaptive=True))
    dataset = {F.RGB: "observation.images.front", F.DEPTH: "observation.images.front_depth"}
    config.camera = CameraConfig(features=dataset)
    policy_dir = responsive(make_policy("tracevla", config)).save_pretrained(tmp_path / "policy")
    served = PolicyServer(ServeConfig(policy=str(policy_dir), port=0, idle_timeout=30))
    served.start_in_thread()
    url = f"ws://127.0.0.1:{served.port}"
    try:
        clients = {name: PolicyClient(url) for name in ("canonical", "unit", "whole")}
        names = {F.OBS_RGB: dataset[F.RGB], F.OBS_DEPTH: dataset[F.DEPTH], F.OBS_STATE: F.STATE,
                 F.OBS_INSTRUCTION: F.TASK}  # the dataset's names, and the toolkit's for the rest
        replies: dict[str, list] = {name: [] for name in clients}
        for frame in observations(7, 16):
            canonical, robot = robot_formats(frame, names)
            for name, observation in (("canonical", canonical), *robot.items()):
                replies[name].append(clients[name].step(observation))
        assert any(reply["traces"] for reply in replies["canonical"])  # the tracker saw the same frames
        for name in ("unit", "whole"):
            for reply, expected in zip(replies[name], replies["canonical"]):
                assert np.array_equal(reply["actions"], expected["actions"]), name
                assert len(reply["traces"]) == len(expected["traces"])
                assert all(map(np.array_equal, reply["traces"], expected["traces"]))
        # Bits the client cannot convert without a guess: one line, before anything is sent.
        good = robot_formats(observations(7, 1)[0], names)[1]["unit"]
        front = dataset[F.RGB]
        for bad, reason in [({**good, front: good[front] * 200}, r"values up to .* not whole numbers"),
                            ({**good, front: good[front] - 0.5}, "negative values"),
                            ({**good, front: good[front][:2]}, r"expected an image .* got shape \[2, 64, 64\]"),
                            ({**good, F.OBS_RGB: good[front]}, "holds 'observation.images.rgb' twice"),
                            ({k: v for k, v in good.items() if k != F.STATE},
                             "has no 'proprio' or 'observation.state'"),
                            ({**good, dataset[F.DEPTH]: np.zeros((2, 64, 64))}, "expected a depth map")]:
            with pytest.raises(ValueError, match=reason):
                clients["unit"].step(bad)
        for client in clients.values():
            client.close()
    finally:
        served.stop()


def test_served_policy_reads_the_camera_the_contract_names(tiny_tracevla):
    """ServedPolicy and the client's conversion take every key from the contract: here a contract whose
    camera input is a dataset's name, over a stand-in connection that records what would be sent."""
    from stvla.serve.client import ServedPolicy

    contract = json.loads((tiny_tracevla / "processor.json").read_text())
    rename = {F.RGB: "observation.images.wrist"}
    contract["input_features"] = {rename.get(k, k): v for k, v in contract["input_features"].items()}
    contract["observation_keys"] = {rename.get(k, k): (rename[k] if k in rename else v)
                                    for k, v in contract["observation_keys"].items()}
    contract.pop("camera", None)  # a contract written before the camera entry: its size is the camera's

    class Recorded(PolicyClient):
        def _connect(self) -> None:
            self.metadata, self.sent = {"type": "metadata", "contract": contract}, []
            outer = self

            class Socket:
                def send(self, data: bytes) -> None:
                    outer.sent.append(unpack(data))

                def recv(self, timeout: float) -> bytes:
                    infer = outer.sent[-1]["infer"]
                    return pack({"type": "step", "actions": np.zeros((4, 4), np.float32) if infer else None,
                                 "traces": []})

            self._socket = Socket()

    client = Recorded("ws://unused")
    policy = ServedPolicy(client)
    assert policy.image_size == 64 and policy.state_dim == 4 and policy.action_dim == 4
    policy.reset()
    frame = observations(8, 1)[0]
    robot = {**frame, "observation.images.wrist": frame[F.OBS_RGB] / np.float32(255), "ee.position": np.zeros(3)}
    del robot[F.OBS_RGB]
    assert policy.select_action(robot).shape == (4,)
    sent = client.sent[-1]["observation"]
    assert sorted(sent) == sorted([F.OBS_DEPTH, F.OBS_INTRINSICS, F.OBS_STATE, F.OBS_INSTRUCTION,
                                   "observation.images.wrist"])
    assert sent["observation.images.wrist"].dtype == np.uint8
    assert np.array_equal(sent["observation.images.wrist"], frame[F.OBS_RGB])


def test_to_contract_leaves_canonical_observations_alone_and_intrinsics_to_a_policy_that_keeps_them(tiny_tracevla):
    from stvla.serve import to_contract

    contract = json.loads((tiny_tracevla / "processor.json").read_text())
    frame = {**observations(9, 1)[0], "ee.position": np.zeros(3)}
    sent = to_contract(frame, contract)
    assert sorted(sent) == sorted(contract["observation_keys"].values())  # what the policy reads, nothing else
    assert all(sent[key] is frame[key] for key in sent)  # the canonical formats pass untouched (same arrays)
    without = {k: v for k, v in frame.items() if k != F.OBS_INTRINSICS}
    with pytest.raises(ValueError, match="has no 'camera.intrinsics' or 'observation.camera.intrinsics'"):
        to_contract(without, contract)
    # A policy trained with --fov keeps its camera (the contract's camera.intrinsics): the server uses it.
    kept = {**contract, "camera": {**contract.get("camera", {}), "intrinsics": [60.0, 60.0, 31.5, 31.5]}}
    assert F.OBS_INTRINSICS not in to_contract(without, kept)
    uint16 = {**frame, F.OBS_DEPTH: np.full((64, 64), 1234, np.uint16)}
    assert to_contract(uint16, contract, depth_scale=0.0001)[F.OBS_DEPTH][0, 0] == np.float32(0.1234)
    with pytest.raises(ValueError, match="depth_scale must be > 0"):
        to_contract(uint16, contract, depth_scale=0)


def test_stvla_serve_on_port_0_announces_the_port_it_bound(tiny_tracevla):
    """`--port 0` takes any free port: the line the command prints names that port, and it answers there."""
    command = [sys.executable, "-m", "stvla.cli", "serve", "--policy", str(tiny_tracevla), "--port", "0"]
    served = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = served.stdout.readline()
        port = int(line.split("ws://127.0.0.1:")[1].split(";")[0])
        assert port != 0 and f"http://127.0.0.1:{port}/healthz" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            assert reply.status == 200
    finally:
        served.terminate()
        served.wait(timeout=30)


@pytest.mark.parametrize("field, value, needle", [
    ("port", 70000, "--port must be in 0..65535"), ("port", -1, "--port must be in 0..65535"),
    ("idle_timeout", float("nan"), "--idle_timeout must be a positive number"),
    ("idle_timeout", -1.0, "--idle_timeout must be a positive number"),
    ("max_message_bytes", -1, "--max_message_bytes must be >= 0"),
    ("max_steps_per_second", float("inf"), "--max_steps_per_second must be a number >= 0"),
])
def test_serve_settings_out_of_range_are_refused_before_anything_loads(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        ServeConfig(policy="unused", **{field: value})
