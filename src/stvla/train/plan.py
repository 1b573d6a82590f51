"""What `stvla train` would do with a dataset, said before it runs: the last lines of `stvla info`.

One line each for the action (the layout read from its names and the tokenizer it gets), the cameras
(their size and how they are fitted to the model's square), the depth and the camera intrinsics (and
which policy types can train without them), and the state. Each comes from the function training
itself calls (`action_layout_for`, `model_image_side`, the episode store's roles and fit, each policy
type's processor), so what is said is what training does; where training would refuse the dataset,
the line says why, in the refusal's own words, and the others are still given. The depth of every episode
is decoded and checked as training's decoding checks it (`check_decoded`: millimetres, negative or no
valid values), so `stvla info` refuses what training would, at the cost of decoding the depth once.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from stvla import features as F
from stvla.data.cache import check_decoded
from stvla.data.roles import DataConfig
from stvla.data.store import EpisodeStore
from stvla.image_fit import square_window
from stvla.policies.action_layout import action_layout_for, action_names
from stvla.policies.registry import POLICIES
from stvla.train.trainer import TrainConfig, check_dataset, model_image_side

RGB_ONLY_POLICY = "tracevla"  # the policy type training switches to RGB only on a dataset without depth


def training_plan(root: str | Path, data: DataConfig | None = None, action_layout: str = "") -> dict[str, str]:
    """{"data", "action", "cameras", "depth", "state"} -> one line each on what `stvla train --dataset root`
    (with the dataset options `data` and `--action_layout`) would do; a refusal is a line starting
    "refused:", never an error."""
    data = data or DataConfig()
    plain = EpisodeStore(root)  # the features as stored: the action and the state keep their names
    where = f"dataset {plain.root}"
    try:
        check_dataset(plain)
    except ValueError as error:
        plan = {"data": f"refused: {error}"}
    else:
        plan = {"data": f"checked: {plain.num_episodes} episodes' rows in time order, tasks, finite actions and states, video files and schema as training reads them"}
    plan["action"] = _action_line(plain.info["features"], where, action_layout)
    try:
        roles = EpisodeStore(root, data)
        side = model_image_side(TrainConfig(dataset=str(root), data=data), roles)
        fitted = EpisodeStore(root, data, image_size=side)
    except ValueError as error:  # the cameras or the depth cannot be told apart, or an option is wrong
        plan["cameras"], plan["depth"] = f"refused: {error}", "not known until the cameras are chosen"
    else:
        plan["cameras"] = _camera_line(fitted, side)
        plan["depth"] = _depth_line(fitted)
    state = plain.info["features"].get(F.STATE)
    plan["state"] = (f"{F.STATE}, {state['shape'][0]} values" if state else
                     f"none: train with --model.use_state false (no state token; every policy type but llarva, "
                     f"whose prompt reads the state's history)")
    return plan


def _action_line(features: dict[str, dict], where: str, override: str) -> str:
    action = features.get(F.ACTION)
    if action is None:
        return f"refused: {where} has no {F.ACTION!r} feature"
    try:
        layout = action_layout_for(action, where, override)
    except ValueError as error:
        return f"refused: {error}"
    size, names = int(action["shape"][0]), action_names(action)
    read = f"{size} values" + (f" ({' '.join(names)})" if len(names) == size else ", unnamed")
    if layout.kind == "ee":
        grid = layout.grid
        parts = [f"translation {list(grid.translation_dims)}"] + \
            ([f"rotation {list(grid.rotation_dims)}"] if grid.has_rotation else []) + [f"gripper {grid.gripper_dim}"]
        tokenizer = f"end effector (ee): SpatialVLA's adaptive action grid, {', '.join(parts)}"
    else:
        tokenizer = f"joints (joint): per-dimension bins, gripper dims {list(layout.gripper_dims)}"
    return f"{read} -> {tokenizer}" + (" (read by position)" if "by position" in layout.note else "")


def _camera_line(store: EpisodeStore, side: int) -> str:
    cameras = [role for role in (F.RGB, *F.EXTRA_CAMERAS) if role in store.features]
    described = []
    for role in cameras:
        height, width = store.fitted.get(role, store.features[role]["shape"][:2])
        name = store.stored_key(role)
        if role not in store.fitted:
            described.append(f"{name} {height}x{width}, read as it is")
            continue
        _, _, length = square_window(height, width, store.image_fit)
        window = (f"the centred {length}x{length} square" if store.image_fit == "crop"
                  else f"padded with zeros to {length}x{length}")
        described.append(f"{name} {height}x{width} -> {side}x{side} (--image_fit {store.image_fit}: {window}"
                         + (", resized" if length != side else "") + ")")
    return "; ".join(described) + f"; the model reads {side}x{side}" + \
        (" (--model.image_size sets it)" if store.fitted else "")


def _depth_line(store: EpisodeStore) -> str:
    # Which policy types read depth even without Ego3D (and, for trace tokens, with 2D points): those cannot
    # train without it; the others can, told so.
    always, optional = [], []
    for name, cls in POLICIES.items():
        config = cls.config_class()
        config.vla = dataclasses.replace(config.vla, use_ego3d=False)
        if hasattr(config, "trace_space"):
            config = dataclasses.replace(config, trace_space="2d")
        (always if cls.processor_class(config, name).needs_depth else optional).append(name)
    without = "--model.use_ego3d false (tracetokens also --trace_space 2d)"
    if F.DEPTH not in store.features:
        others = [name for name in optional if name != RGB_ONLY_POLICY]
        return (f"none: {RGB_ONLY_POLICY} trains on RGB only; {', '.join(others)} with {without}; "
                f"{', '.join(always)} cannot (record depth, or add an estimate with stvla depth)")
    depth = store.stored_key(F.DEPTH)
    try:  # as training checks every episode's depth as it decodes it (the cache)
        for episode in tqdm(range(store.num_episodes), desc="info: depth", unit="ep", leave=False,
                            disable=not sys.stderr.isatty()):
            check_decoded(store, episode, F.DEPTH, store.episode(episode, [F.DEPTH])[F.DEPTH])
    except ValueError as error:
        return f"refused: {error}"
    if F.INTRINSICS not in store.features:
        return (f"{depth}, no intrinsics: give --fov DEGREES or --intrinsics fx,fy,cx,cy, which policies reading "
                f"depth need; else {', '.join(optional)} train with {without}, {', '.join(always)} cannot")
    given = store.roles.intrinsics if store.roles is not None else None
    camera = F.INTRINSICS if given is None else "given: fx,fy,cx,cy " + ",".join(
        f"{given[i, j]:g}" for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    return f"{depth}, intrinsics {camera}: every policy type can train"
