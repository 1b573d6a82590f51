"""A minimal robot loop against `stvla serve`: what runs on the robot's computer.

On the GPU machine:   stvla serve --policy runs/demo/st/policy --host 0.0.0.0 --token_file ~/.stvla-token --device cuda
On the robot:         python examples/robot_loop.py --url ws://gpu-box:8765 --token_file ~/.stvla-token

Needs only numpy, msgpack and websockets (`pip install numpy msgpack websockets` and this package's
`stvla/serve/client.py`, `formats.py`, `wire.py` and `stvla/features.py`). Replace `Robot` with your
camera and arm (the client converts what drivers give: see `observe`); here it is the
Meta-World simulator, so the loop runs anywhere stvla is installed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from stvla.serve.client import ActionQueue, PolicyClient
from stvla.serve.formats import model_image_size


class Robot:
    """Your robot: observe() -> the keys the policy's contract names; act(action). A simulator stands in."""

    def __init__(self, image_size: int):
        from stvla.envs import make_env

        self.env = make_env("window-open-v3", image_size=image_size)
        self.obs, _ = self.env.reset(seed=0)
        self.done = False

    def observe(self) -> dict:
        # rgb uint8 (H, W, 3); depth float32 metres (H, W); camera.intrinsics (3, 3); proprio (S,); instruction.
        # The client also takes the dataset's names (observation.images.front), float or channels-first RGB,
        # uint16 depth in millimetres (PolicyClient(depth_scale=0.001)) and (H, W, 1) depth: formats.py.
        return {key: self.obs[key] for key in ("rgb", "depth", "camera.intrinsics", "proprio", "instruction")}

    def act(self, action: np.ndarray) -> None:
        self.obs, _, _, _, info = self.env.step(action)
        self.done = bool(info["success"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the server")
    parser.add_argument("--token_file", default="", help="file holding the server's token")
    parser.add_argument("--mode", default="chunk", choices=["chunk", "async"], help="how chunks become actions")
    parser.add_argument("--steps", type=int, default=200, help="control steps")
    args = parser.parse_args()
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    with PolicyClient(args.url, token=token) as client:
        contract = client.contract
        print(f"policy {contract['policy']}: reads {sorted(contract['input_features'])}, chunk {contract['chunk_size']}")
        robot = Robot(model_image_size(contract))  # the simulator renders the model's square
        actions = ActionQueue(client, mode=args.mode)
        actions.reset()  # a new episode: the server's tracker starts over
        period = 1.0 / contract.get("fps", 10)
        for step in range(args.steps):
            started = time.perf_counter()
            robot.act(actions.act(robot.observe()))
            if robot.done:
                print(f"success after {step + 1} steps")
                break
            time.sleep(max(0.0, period - (time.perf_counter() - started)))  # hold the control rate
        else:
            print(f"no success in {args.steps} steps")


if __name__ == "__main__":
    main()
