"""Simulated robot environments with RGB, metric depth and camera geometry (gymnasium API).

Observation keys are named in stvla.features (`OBS_*`); `episode_seed` gives every episode's start,
disjoint between training and evaluation. Each Meta-World task, and each task variant whose goal or
object moves (`VARIANTS`: reach-moving-v3, reach-moving-hidden-v3 and button-press-topdown-moving-v3,
where history is needed), is registered with gymnasium as `stvla/<task>`, for example
`gymnasium.make("stvla/pick-place-v3", image_size=128)`.
"""

from __future__ import annotations

import gymnasium as gym

from stvla.envs.instructions import INSTRUCTIONS
from stvla.envs.metaworld_env import (
    CAMERAS,
    CONTROL_MODE,
    IMAGE_SIZES,
    MT10_TASKS,
    ROBOT_TYPE,
    TASKS,
    EnvConfig,
    MetaWorldRGBDEnv,
    has_subgoal,
    instruction_of,
    make_env,
    parse_tasks,
)
from stvla.envs.seeds import episode_seed
from stvla.envs.variants import VARIANTS

for _task in TASKS + tuple(VARIANTS):
    if f"stvla/{_task}" not in gym.registry:
        gym.register(f"stvla/{_task}", entry_point=make_env, kwargs={"task": _task}, disable_env_checker=True)

__all__ = [
    "CAMERAS", "CONTROL_MODE", "IMAGE_SIZES", "INSTRUCTIONS", "instruction_of", "MT10_TASKS", "ROBOT_TYPE", "TASKS",
    "VARIANTS", "EnvConfig", "MetaWorldRGBDEnv", "episode_seed", "has_subgoal", "make_env", "parse_tasks",
]
