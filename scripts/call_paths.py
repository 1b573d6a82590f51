"""How far a config and an observation travel through the package: the module crossings of one short
`train()` and of `select_action`, recorded with `sys.setprofile`.

    python scripts/call_paths.py [--work runs/call-paths]

Counts distinct call edges (caller function -> callee function) between two stvla modules, so a loop
over frames or steps counts once. Printed per path: the modules entered, the edges into each module,
and the edges that climb from a lower layer to a higher one (docs/architecture.md, "Layers": imports,
and so calls made by name, point down; a call that climbs is a callback). A code-structure figure for refactoring, not a
speed benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")

# Layer of each top-level part of the package (docs/architecture.md, "Layers"); anything else (the small
# modules with no stvla imports beneath them all) is layer 1.
LAYERS = {"geometry": 2, "traces": 3, "envs": 4, "data": 5, "policies": 6, "serve": 7, "train": 8, "evaluate": 8,
          "benchmark": 8, "report": 9, "cli": 9}


def module_of(filename: str) -> str | None:
    """`stvla.data.store` for .../stvla/data/store.py, None outside the package."""
    parts = Path(filename).with_suffix("").parts
    if "stvla" not in parts:
        return None
    return ".".join(parts[len(parts) - 1 - parts[::-1].index("stvla"):])


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 1) if len(parts) > 1 else 1


# Calls counted one by one, not as edges: how often the dataset is opened and an episode read from it.
COUNTED = {("stvla.data.store", "__init__"): "dataset openings (EpisodeStore)",
           ("stvla.data.store", "episode"): "episode reads from the store (parquet + video decode)"}


def record(run) -> tuple[set[tuple[str, str, str, str]], Counter]:
    """Distinct (caller module, caller function, callee module, callee function) edges across modules,
    and the number of calls of each COUNTED function."""
    edges: set[tuple[str, str, str, str]] = set()
    counted: Counter = Counter()

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = module_of(frame.f_code.co_filename)
        if (callee, frame.f_code.co_name) in COUNTED and frame.f_code.co_qualname.startswith("EpisodeStore."):
            counted[COUNTED[(callee, frame.f_code.co_name)]] += 1
        caller_frame = frame.f_back
        while caller_frame is not None and module_of(caller_frame.f_code.co_filename) is None:
            caller_frame = caller_frame.f_back  # through library code (torch, numpy) back to ours
        if callee is None or caller_frame is None:
            return
        caller = module_of(caller_frame.f_code.co_filename)
        if caller != callee:
            edges.add((caller, caller_frame.f_code.co_name, callee, frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return edges, counted


def report(title: str, recorded: tuple[set[tuple[str, str, str, str]], Counter]) -> None:
    edges, counted = recorded
    entries = Counter(callee for _, _, callee, _ in edges)
    climbs = sorted({(a, b) for a, _, b, _ in edges if layer(a) < layer(b)})
    print(f"{title}: {len(entries)} modules entered, {len(edges)} cross-module call edges, "
          f"{len(climbs)} module pairs climbing a layer")
    for module, count in entries.most_common():
        print(f"  {count:3d} edges into {module}")
    for caller, callee in climbs:
        print(f"  climbs: {caller} -> {callee}")
    for what, count in counted.items():
        print(f"  {what}: {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/call-paths", help="directory for the small dataset and the run")
    args = parser.parse_args()
    import shutil

    from stvla.data import CollectConfig, collect
    from stvla.envs import make_env
    from stvla.policies.image_encoder import ImageEncoderConfig
    from stvla.policies.registry import load_policy
    from stvla.policies.trunk import TrunkConfig
    from stvla.policies.vla import VLAConfig
    from stvla.data.roles import DataConfig
    from stvla.train import TrainConfig, train

    work = Path(args.work)
    dataset = work / "data"
    collect(CollectConfig(task="reach-v3", episodes=2, out=str(dataset), image_size=64, resume=True), progress=False)
    shutil.rmtree(work / "cache", ignore_errors=True)  # the caches are built inside the recorded run
    shutil.rmtree(work / "st", ignore_errors=True)
    model = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                      trunk=TrunkConfig(width=32, depth=2, heads=2))
    config = TrainConfig(policy="st", dataset=str(dataset), out=str(work / "st"), model=model, steps=2, batch_size=4,
                         save_every=1, data=DataConfig(cache_dir=str(work / "cache")))
    policy_dir = None

    def run_train():
        nonlocal policy_dir
        policy_dir = train(config, progress=False)

    report("train() of an st policy, 2 steps on 2 episodes", record(run_train))
    policy = load_policy(policy_dir)
    env = make_env("reach-v3", image_size=64)
    obs, _ = env.reset(seed=0)
    policy.reset()

    def run_control():
        for _ in range(6):
            policy.select_action(obs)

    report("select_action of an st policy, 6 steps", record(run_control))
    env.close()


if __name__ == "__main__":
    main()
