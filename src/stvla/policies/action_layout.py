"""Which action tokenizer a dataset's action gets, read from the action's names.

- "ee": an end effector's x y z gripper (4) or x y z roll pitch yaw gripper (7), under the usual
  spellings (x, dx, delta_x, ee_x, pos_x; roll, rx, ...): SpatialVLA's adaptive grid
  (`AdaptiveActionGrid`), which turns the translation into a direction and a length.
- "joint": every other action (joint positions, absolute or delta, any size, one arm or two):
  per-dimension quantile bins (`PerDimensionTokenizer`), with the dimensions named as grippers
  (gripper, left_gripper, gripper.pos, ...) kept to a few bins.

Names that say joints (joint, shoulder, elbow, wrist, waist, forearm, motor names such as
`shoulder_pan.pos`, ...) are never read as an end effector, whatever their number: a 7-D joint
action read as xyz + rpy + gripper would train on nonsense without a word. Only 4 or 7 values
without names keep the old reading by position (x y z (roll pitch yaw) gripper), and say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stvla import features as F
from stvla.policies.action_tokenizer import ActionGridConfig

LAYOUTS = ("ee", "joint")
# A name holding one of these (as a word part) is a joint's or a motor's.
JOINT_WORDS = ("joint", "shoulder", "elbow", "wrist", "waist", "forearm", "hip", "knee", "ankle", "torso",
               "neck", "pan", "tilt", "flex", "lift")
# LeRobot motor names end in a quantity: "shoulder_pan.pos", "gripper.vel".
_MOTOR_SUFFIX = re.compile(r"\.(pos|vel|velocity|effort|torque|current)$")
GRIPPER_WORDS = ("grip", "claw")
# Spellings of one end-effector axis: the axis itself after any of these prefixes (dx, delta_x, ee_pos_x).
_EE_PREFIXES = ("delta_", "ee_", "eef_", "pos_", "position_", "rot_", "d")
_EE_AXES = {"x": ("x",), "y": ("y",), "z": ("z",), "roll": ("roll", "rx"), "pitch": ("pitch", "ry"),
            "yaw": ("yaw", "rz")}
# The old reading of unnamed actions, by position.
POSITIONAL_GRIDS = {4: ActionGridConfig(has_rotation=False, translation_dims=(0, 1, 2), gripper_dim=3),
                    7: ActionGridConfig(has_rotation=True, translation_dims=(0, 1, 2), rotation_dims=(3, 4, 5),
                                        gripper_dim=6)}
_POSITIONAL_NAMES = {4: "x y z gripper", 7: "x y z roll pitch yaw gripper"}


@dataclass(frozen=True)
class ActionLayout:
    """How a dataset's action becomes tokens."""

    kind: str  # "ee" (the adaptive grid) or "joint" (per-dimension bins)
    grid: ActionGridConfig | None  # ee: which action indices are the translation, rotation and gripper
    gripper_dims: tuple[int, ...]  # joint: the action indices of grippers
    note: str = ""  # one line for the user when the layout was not plain from the names


def action_names(action: dict) -> list[str]:
    """The action feature's names, lower case ([] if it has none); LeRobot also writes {"motors": [...]}, and
    converters {"arm": [...], "gripper": [...]}: the groups' names in order."""
    names = action.get("names") or []
    if isinstance(names, dict):
        names = [name for group in names.values() for name in (group or [])]
    return [str(name).lower() for name in names]


def says_joint(name: str) -> bool:
    """Whether an action name is a joint's or a motor's (never an end-effector axis)."""
    parts = re.split(r"[^a-z0-9]+", name.lower())
    return bool(_MOTOR_SUFFIX.search(name.lower())) or any(word in part for part in parts for word in JOINT_WORDS)


def says_gripper(name: str) -> bool:
    return any(word in name.lower() for word in GRIPPER_WORDS)


def _axis_of(name: str) -> str | None:
    """The end-effector axis a name spells (x, ..., yaw), or None."""
    spelling = re.sub(r"[.\- ]", "_", name)
    while True:
        for axis, words in _EE_AXES.items():
            if spelling in words:
                return axis
        stripped = next((spelling[len(p):] for p in _EE_PREFIXES if spelling.startswith(p) and len(spelling) > len(p)),
                        None)
        if stripped is None:
            return None
        spelling = stripped


def end_effector_grid(names: list[str]) -> ActionGridConfig | None:
    """The grid reading names that are exactly an end effector's x y z (roll pitch yaw) gripper, else None."""
    if len(names) not in POSITIONAL_GRIDS or any(says_joint(n) for n in names):
        return None
    axes = [_axis_of(n) for n in names]
    grippers = [i for i, n in enumerate(names) if says_gripper(n)]
    wanted = ["x", "y", "z"] + (["roll", "pitch", "yaw"] if len(names) == 7 else [])
    if len(grippers) != 1 or sorted(a for a in axes if a) != sorted(wanted) or len(wanted) + 1 != len(names):
        return None
    index = {axis: i for i, axis in enumerate(axes) if axis}
    rotation = {"rotation_dims": tuple(index[a] for a in ("roll", "pitch", "yaw"))} if len(names) == 7 else {}
    return ActionGridConfig(has_rotation=len(names) == 7, translation_dims=tuple(index[a] for a in "xyz"),
                            gripper_dim=grippers[0], **rotation)


def action_layout_for(action: dict, where: str, override: str = "") -> ActionLayout:
    """The layout of an action feature ({"shape": [D], "names": [...]}) from its names, or `override`
    ("ee" or "joint"; "" = from the names). `where` names the dataset in errors."""
    if override not in ("", *LAYOUTS):
        raise ValueError(f"--action_layout must be one of {', '.join(LAYOUTS)} (or '': from the action's names), "
                         f"got {override!r}")
    size = int(action["shape"][0])
    given = action_names(action)
    names = given if len(given) == size else []  # missing, or not one per value: unnamed
    joints = [n for n in given if says_joint(n)]  # joints even among names that do not count the values
    grippers = tuple(i for i, n in enumerate(names) if says_gripper(n))
    joint = ActionLayout("joint", None, grippers)
    if override == "joint":
        return joint
    grid = end_effector_grid(names)
    if grid is not None:
        return ActionLayout("ee", grid, ())
    if override == "ee":
        if joints:
            raise ValueError(f"{where}: --action_layout ee, but the action's names say joints ({', '.join(joints)}); "
                             f"the grid reads an end effector's x y z (roll pitch yaw) gripper")
        if size not in POSITIONAL_GRIDS:
            raise ValueError(f"{where}: --action_layout ee, but {F.ACTION} has {size} values; the grid reads "
                             f"x y z gripper (4) or x y z roll pitch yaw gripper (7)")
        return ActionLayout("ee", POSITIONAL_GRIDS[size], (),
                            note=f"{where}: {F.ACTION} read by position as an end effector's "
                                 f"{_POSITIONAL_NAMES[size]} (--action_layout ee)")
    unnamed = f" has {size} values but {len(given)} names ({', '.join(given[:3])}, ...)" if given else \
        f" has {size} values without names"
    if not names and size in POSITIONAL_GRIDS and not joints:
        return ActionLayout("ee", POSITIONAL_GRIDS[size], (),
                            note=f"{where}: {F.ACTION}{unnamed}: read by position as an end effector's "
                                 f"{_POSITIONAL_NAMES[size]} (--action_layout joint for per-dimension bins)")
    named = (f"'s {size} names ({names[0]}, ...) are not an end effector's x y z (roll pitch yaw) gripper" if names
             else unnamed)
    return ActionLayout("joint", None, grippers,
                        note=f"{where}: {F.ACTION}{named}: per-dimension bins (the joint layout), gripper dims "
                             f"{list(grippers)}")


def control_mode(layout: str, has_rotation: bool) -> str:
    """How the robot is controlled, as LLARVA's prompt names it."""
    if layout == "joint":
        return "joint position control"
    return "end-effector delta pose control" if has_rotation else "end-effector delta position control"

