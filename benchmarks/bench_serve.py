"""Serving: what `stvla serve` adds to a control step, how it holds up under concurrent clients, and
what bad traffic gets.

    python benchmarks/bench_serve.py [--seconds 60] [--abuse_seconds 60] [--work runs/bench-serve]

- Round trip: an `st` policy at 128 px (the benchmark's model; its weights do not change the cost),
  one observation per step with inference, over loopback, against `select_action` of the same policy
  in this process inferring every step, the two alternating frame by frame; p50 / p99 of each and the
  median of the paired differences (the serving overhead: wire encoding, the socket, the server's checks).
- Load: 1, 4 and 16 clients, each its own connection and episode, stepping as fast as answered for
  `--seconds` each: requests per second, p99, errors, and the server process's resident memory before
  the runs and after each.
- Bad traffic: while 2 well-behaved clients step, 50 each of garbage bytes, oversized messages, wrong
  tokens and truncated messages (and a few more of each kind); every one must be answered with an error
  or refused, and the well-behaved clients must see no error.
- Abuse (issue 44): a well-behaved robot stepping at `--robot_hz` (a robot's control rate, inferring every
  step) alone, then while, for `--abuse_seconds` each, (a) one connection floods pings and never reads,
  (b) one sends steps with a new 1000-character instruction every time, (c) 20 connections send full steps
  and never read. For each: the robot's p50 / p99 against alone, and the server's resident memory before,
  at its peak during, and 10 s after the attackers leave. The attackers run in their own process.

The server runs as `stvla serve` in its own process (loopback, with a token). Writes
benchmarks/results/serve.json and BENCHMARKS.md (or, with `--scratch DIR`, the same under DIR: a trial run
that leaves the recorded figures alone).
"""

from __future__ import annotations

import argparse
import itertools
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla.envs import make_env  # noqa: E402
from stvla.policies.registry import make_policy  # noqa: E402
from stvla.serve.client import PolicyClient, ServerError  # noqa: E402
from stvla.serve.wire import pack  # noqa: E402

KEYS = ("rgb", "depth", "camera.intrinsics", "proprio", "instruction")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def episode_frames(steps: int) -> list[dict]:
    env = make_env("window-open-v3", image_size=128)
    obs, _ = env.reset(seed=0)
    rng, frames = np.random.default_rng(0), []
    for _ in range(steps):
        frames.append({key: obs[key] for key in KEYS})
        obs, *_ = env.step(rng.uniform(-1, 1, 4))
    env.close()
    return frames


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def paired_step_ms(policy_dir: Path, url: str, token: str, frames: list[dict], repeats: int) -> tuple[list, list]:
    """Each frame stepped locally (`select_action`, inferring every step) and then through the server,
    alternately, so both see the same machine state; the first pass warms up."""
    from stvla.policies.registry import load_policy

    policy = load_policy(policy_dir)
    policy.config.vla.n_action_steps = 1  # infer every step, as the served steps do
    local, served = [], []
    with PolicyClient(url, token=token) as client:
        for _ in range(repeats):
            policy.reset()
            client.reset()
            for frame in frames:
                started = time.perf_counter()
                policy.select_action(frame)
                local.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                client.step(frame, infer=True)
                served.append((time.perf_counter() - started) * 1000)
    return local[len(frames):], served[len(frames):]


def load_run(url: str, token: str, frames: list[dict], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = [0]
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def one_client() -> None:
        try:
            client = PolicyClient(url, token=token)
        except Exception:  # noqa: BLE001 - counted
            with lock:
                errors[0] += 1
            return
        step = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                client.step(frames[step % len(frames)], infer=True)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)
            step += 1
        client.close()

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    p50, p99 = percentiles(latencies)
    return {"clients": clients, "requests_per_s": len(latencies) / seconds, "p50_ms": p50, "p99_ms": p99,
            "errors": errors[0]}


def bad_traffic(url: str, token: str, frames: list[dict], per_kind: int, max_bytes: int) -> dict:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    outcomes = {"answered_with_error": 0, "refused_or_closed": 0, "accepted": 0}
    headers = {"Authorization": f"Bearer {token}"}
    good = pack({"type": "step", "observation": frames[0], "infer": True})
    kinds = {
        "garbage": lambda rng: rng.bytes(int(rng.integers(1, 2000))),
        "truncated": lambda rng: good[: int(rng.integers(1, len(good) - 1))],
        "oversized": lambda rng: b"\x00" * (max_bytes + 1 + int(rng.integers(0, 1000))),
        "wrong fields": lambda rng: pack({"type": "step", "observation": {**frames[0], "proprio": rng.normal(size=9)}}),
    }
    rng = np.random.default_rng(0)
    sent = 0
    for kind, make in kinds.items():
        for _ in range(per_kind):
            try:
                with connect(url, additional_headers=headers, max_size=None, open_timeout=10) as websocket:
                    websocket.recv(timeout=10)  # the metadata
                    websocket.send(make(rng))
                    reply = websocket.recv(timeout=10)
                    outcomes["answered_with_error" if b"error" in reply else "accepted"] += 1
            except (ConnectionClosed, OSError, TimeoutError):
                outcomes["refused_or_closed"] += 1
            sent += 1
    for _ in range(per_kind):  # wrong tokens: refused before the websocket opens
        try:
            PolicyClient(url, token="not-the-token", retries=0).close()
            outcomes["accepted"] += 1
        except (ServerError, InvalidStatus):
            outcomes["refused_or_closed"] += 1
        sent += 1
    return {"sent": sent, **outcomes}


PING = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125  # a masked ping (zero key), never read back


def handshake(port: int, token: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              + f"Authorization: Bearer {token}\r\n\r\n".encode())
    if not s.recv(4096).startswith(b"HTTP/1.1 101"):
        raise ConnectionError("the handshake was refused")
    return s


def push(sockets: list[socket.socket], next_bytes, stop: float) -> None:
    """Send on every socket what `next_bytes()` gives, whole frames only, as fast as each is read, until
    `stop`: a socket the server no longer reads just waits (its frame goes on when it can)."""
    pending = {s: memoryview(b"") for s in sockets}
    for s in sockets:
        s.setblocking(False)
    while time.monotonic() < stop and pending:
        moved = False
        for s in list(pending):
            if not pending[s]:
                pending[s] = memoryview(next_bytes())
            try:
                sent = s.send(pending[s])
            except BlockingIOError:
                continue
            except OSError:  # closed by the server
                del pending[s]
                continue
            pending[s], moved = pending[s][sent:], moved or sent > 0
        if not moved:
            time.sleep(0.002)
    for s in sockets:
        s.close()


def attack(kind: str, url: str, token: str, seconds: float, frames: list[dict]) -> None:
    """One attacker (run in its own process): pings never read, a new long instruction every step, or 20
    connections sending steps and never reading."""
    from websockets.sync.client import connect

    port = int(url.rsplit(":", 1)[1])
    stop = time.monotonic() + seconds
    if kind == "pings":
        burst = PING * 500
        push([handshake(port, token)], lambda: burst, stop)
    elif kind == "instructions":
        rng = np.random.default_rng(1)
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8)
        headers = {"Authorization": f"Bearer {token}"}
        with connect(url, additional_headers=headers, max_size=None) as websocket:
            websocket.recv(timeout=30)
            step = 0
            while time.monotonic() < stop:
                text = rng.choice(letters, 1000).tobytes().decode()
                observation = {**frames[step % len(frames)], "instruction": text}
                websocket.send(pack({"type": "step", "observation": observation}))
                try:
                    websocket.recv(timeout=max(0.1, stop - time.monotonic()))
                except TimeoutError:
                    break
                step += 1
    elif kind == "unread":
        messages = [pack({"type": "step", "observation": frame, "infer": True}) for frame in frames]
        framed = [bytes([0x82, 0x80 | 127]) + len(m).to_bytes(8, "big") + b"\0\0\0\0" + m for m in messages]
        sockets = []
        for _ in range(20):
            try:
                sockets.append(handshake(port, token))
            except (OSError, ConnectionError):  # refused: the server is full
                pass
        counter = itertools.count()
        push(sockets, lambda: framed[next(counter) % len(framed)], stop)


def robot_steps(client: PolicyClient, frames: list[dict], seconds: float, hz: float) -> list[float]:
    """A well-behaved robot: one step a control period, inferring each, for `seconds`; its round trips (ms)."""
    times = []
    client.reset()
    stop, step = time.perf_counter() + seconds, 0
    while time.perf_counter() < stop:
        started = time.perf_counter()
        client.step(frames[step % len(frames)], infer=True)
        times.append((time.perf_counter() - started) * 1000)
        step += 1
        time.sleep(max(0.0, 1 / hz - (time.perf_counter() - started)))
    return times


def abuse(url: str, token: str, frames: list[dict], pid: int, seconds: float, hz: float) -> dict:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    robot = PolicyClient(url, token=token)  # connected before any flood, as a robot in its episode is
    alone = robot_steps(robot, frames, min(seconds, 30.0), hz)
    results = {"robot_hz": hz, "alone_ms": list(percentiles(alone)), "floods": {}}
    for kind in ("pings", "instructions", "unread"):
        before = resident_mib(pid)
        attacker = context.Process(target=attack, args=(kind, url, token, seconds, frames), daemon=True)
        attacker.start()
        peak = [before]
        sampling = [True]

        def sample() -> None:
            while sampling[0]:
                peak[0] = max(peak[0], resident_mib(pid))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample)
        sampler.start()
        time.sleep(min(2.0, seconds / 5))  # the flood under way
        during = robot_steps(robot, frames, seconds - min(2.0, seconds / 5), hz)
        attacker.join(timeout=seconds + 30)
        if attacker.is_alive():
            attacker.terminate()
        time.sleep(10)  # the attacker gone: its connections closed, its memory returned
        sampling[0] = False
        sampler.join()
        results["floods"][kind] = {"robot_ms": list(percentiles(during)), "steps": len(during),
                                   "memory_mib": [before, peak[0], resident_mib(pid)]}
    robot.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load run")
    parser.add_argument("--work", default="runs/bench-serve", help="directory for the policy and the token")
    parser.add_argument("--bad_per_kind", type=int, default=55, help="bad messages of each of the 5 kinds")
    parser.add_argument("--abuse_seconds", type=float, default=60.0, help="length of each abuse flood (0: none)")
    parser.add_argument("--robot_hz", type=float, default=10.0, help="the well-behaved robot's control rate")
    parser.add_argument("--scratch", default="", help="record under this directory, not the repository (a trial)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    policy = make_policy("st")  # 128 px, the benchmark's model
    rng = np.random.default_rng(0)
    policy.fit_statistics(rng.uniform(-1, 1, (500, 4)), rng.normal(0, 0.3, (500, 4)))
    policy_dir = policy.save_pretrained(work / "st")
    token_file = work / "token"
    token = "bench-token-0123456789"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "stvla.cli", "serve", "--policy", str(policy_dir), "--port",
                               str(port), "--token_file", str(token_file)])
    url = f"ws://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                PolicyClient(url, token=token, retries=0).close()
                break
            except (ConnectionError, OSError, ServerError):
                time.sleep(0.5)
        frames = episode_frames(40)
        local, served = paired_step_ms(policy_dir, url, token, frames, repeats=6)
        memory = [resident_mib(server.pid)]  # before the load runs, then after each
        load = []
        for clients in (1, 4, 16):
            load.append(load_run(url, token, frames, clients, args.seconds))
            memory.append(resident_mib(server.pid))
        with PolicyClient(url, token=token) as client:
            max_bytes = client.metadata["max_message_bytes"]
        stop = time.perf_counter() + 3600
        good_errors = [0]

        def well_behaved() -> None:
            with PolicyClient(url, token=token) as client:
                step = 0
                while time.perf_counter() < stop:
                    try:
                        client.step(frames[step % len(frames)], infer=step % 4 == 0)
                    except Exception:  # noqa: BLE001 - counted
                        good_errors[0] += 1
                    step += 1

        good = [threading.Thread(target=well_behaved) for _ in range(2)]
        for thread in good:
            thread.start()
        bad = bad_traffic(url, token, frames, args.bad_per_kind, max_bytes)
        stop = time.perf_counter()
        for thread in good:
            thread.join()
        bad["well_behaved_errors"] = good_errors[0]
        abused = None
        if args.abuse_seconds:
            abused = abuse(url, token, frames, server.pid, args.abuse_seconds, args.robot_hz)
    finally:
        server.terminate()
        server.wait()

    (local50, local99), (served50, served99) = percentiles(local), percentiles(served)
    rows = [("st at 128 px, one step with inference: local select_action p50 / p99 (ms)", f"{local50:.1f} / {local99:.1f}"),
            ("the same through stvla serve over loopback: round trip p50 / p99 (ms)", f"{served50:.1f} / {served99:.1f}"),
            ("serving overhead: median of the paired differences, served - local (ms)",
             f"{float(np.median(np.subtract(served, local))):.1f}")]
    rows += [(f"{r['clients']} concurrent clients, {args.seconds:.0f} s: requests/s, p50 / p99 (ms), errors",
              f"{r['requests_per_s']:.1f}, {r['p50_ms']:.0f} / {r['p99_ms']:.0f}, {r['errors']}") for r in load]
    rows += [("server resident memory before the load runs / after 1, 4, 16 clients (MiB)",
              " / ".join(f"{m:.0f}" for m in memory)),
             ("bad traffic sent (garbage, truncated, oversized, wrong fields, wrong token)", str(bad["sent"])),
             ("... answered with an error / refused or closed / accepted",
              f"{bad['answered_with_error']} / {bad['refused_or_closed']} / {bad['accepted']}"),
             ("... errors seen meanwhile by 2 well-behaved clients", str(bad["well_behaved_errors"]))]
    if abused:
        alone50, alone99 = abused["alone_ms"]
        rows.append((f"abuse: a robot at {abused['robot_hz']:g} Hz alone: p50 / p99 (ms)",
                     f"{alone50:.1f} / {alone99:.1f}"))
        names = {"pings": "one connection flooding pings, never reading",
                 "instructions": "one connection sending a new 1000-character instruction every step",
                 "unread": "20 connections sending full steps, never reading"}
        for kind, flood in abused["floods"].items():
            p50, p99 = flood["robot_ms"]
            before, peak, after = flood["memory_mib"]
            rows.append((f"... while {names[kind]}, {args.abuse_seconds:.0f} s: robot p50 / p99 (ms, x alone); "
                         f"server memory before / peak / 10 s after (MiB)",
                         f"{p50:.1f} / {p99:.1f} ({p50 / alone50:.2f}x); {before:.0f} / {peak:.0f} / {after:.0f}"))
    record("serve", {"local_ms": [local50, local99], "served_ms": [served50, served99], "load": load,
                     "memory_mib": memory, "bad_traffic": bad, "abuse": abused}, rows,
           "Serving (stvla serve on loopback, its own process; clients in one process)",
           **({"root": Path(args.scratch)} if args.scratch else {}))


if __name__ == "__main__":
    run(main)
