"""Meta-World (MuJoCo) as a gymnasium environment with RGB, metric depth and camera geometry.

Every one of Meta-World's 50 v3 tasks is available by name. Observations are flat dicts with
dotted keys (their names in stvla.features, `OBS_*`):

    rgb                (H, W, 3) uint8
    depth              (H, W) float32, metres along the optical axis, far background clipped
    camera.intrinsics  (3, 3) float64
    camera.pose        (4, 4) float64, world-from-camera, OpenCV axes
    ee.position        (3,) float64, the point between the fingers, world frame
    ee.pixel           (2,) float64, ee.position projected into the image as (u, v)
    proprio            (4,) float32, hand position (3) + gripper opening (1)
    instruction        str, one English sentence per task

With `depth_model` (a local ZoeDepth or Depth Anything V2 metric checkpoint), "depth" is that model's estimate from "rgb" instead
of the rendered depth (stvla.envs.depth_model), as on a robot without a depth sensor.

The action is Meta-World's 4-D (dx, dy, dz, gripper) in [-1, 1]. `info` carries `success` and the
sub-goal signals `near_object` and `grasped` (a task without a sub-goal, `has_subgoal`, reports neither).
Episodes never terminate on their own; they are truncated after `max_episode_steps`.
"""

from __future__ import annotations

import atexit
import os
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np

from stvla import features as F
from stvla import geometry
from stvla.config import KEY_NEUTRAL
from stvla.envs.instructions import INSTRUCTIONS
from stvla.envs.variants import VARIANTS, MovingGoal, MovingObject

TASKS: tuple[str, ...] = tuple(INSTRUCTIONS)
MT10_TASKS: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
    "window-close-v3",
)
CAMERAS: tuple[str, ...] = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
IMAGE_SIZES: tuple[int, ...] = (64, 96, 128, 160, 192, 224, 256)
# Meta-World mounts its corner cameras upside down; we roll them 180 degrees about the optical axis.
_UPSIDE_DOWN_CAMERAS = ("corner", "corner2", "corner3", "corner4")
# A geom and site group the renderer does not draw (MuJoCo draws groups 0-2 by default): a hidden object's go there.
_HIDDEN_GROUP = 5
# Tasks for which Meta-World defines no sub-goal: its `near_object` is constant 0 (reach-wall, door-close)
# or, for reach, the distance to the goal rather than an indicator; nothing is grasped in any of them.
NO_SUBGOAL_TASKS = frozenset({"reach-v3", "reach-wall-v3", "door-close-v3"})
ROBOT_TYPE = "sawyer"
CONTROL_MODE = "end-effector delta position control"


@dataclass
class EnvConfig:
    task: str = "pick-place-v3"  # Meta-World v3 task name (see stvla.envs.TASKS)
    camera: str = "corner3"  # MuJoCo camera to render from (see stvla.envs.CAMERAS)
    image_size: int = 128  # square image side in pixels (see stvla.envs.IMAGE_SIZES)
    depth_max: float = 4.0  # metres; depth beyond this (the far background) is clipped to it
    max_episode_steps: int = 500  # steps before the episode is truncated (Meta-World's limit is 500)
    depth_model: str = field(default="", metadata=KEY_NEUTRAL)  # local depth model checkpoint (ZoeDepth or Depth Anything V2 metric) whose estimate replaces the rendered depth ("" = rendered)
    depth_device: str = field(default="cpu", metadata=KEY_NEUTRAL)  # torch device the depth model runs on

    def validate(self) -> None:
        """Raise a ValueError that lists the valid choices when a field is out of range."""
        if self.task not in INSTRUCTIONS and self.task not in VARIANTS:
            raise ValueError(f"unknown task {self.task!r}; valid tasks: {', '.join(TASKS + tuple(VARIANTS))}")
        if self.camera not in CAMERAS:
            raise ValueError(f"unknown simulator camera {self.camera!r} (here --camera names a Meta-World camera, not a "
                             f"dataset feature); valid cameras: {', '.join(CAMERAS)}")
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(
                f"unsupported image_size {self.image_size}; valid sizes: {', '.join(map(str, IMAGE_SIZES))}"
            )
        if not 0.1 <= self.depth_max <= 100.0:
            raise ValueError(f"depth_max must be in [0.1, 100] metres, got {self.depth_max}")
        if not 1 <= self.max_episode_steps <= 500:
            raise ValueError(f"max_episode_steps must be in [1, 500], got {self.max_episode_steps}")


def _make_metaworld(task: str):
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    mw_env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"](seed=0)
    # Randomised starts drawn from the env's own seeded RNG, so that seed(s) fixes the start.
    mw_env._freeze_rand_vec = False
    mw_env.seeded_rand_vec = True
    return mw_env


def _make_expert(task: str):
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


class MetaWorldRGBDEnv(gym.Env):
    """One Meta-World task rendered from one camera with RGB and metric depth (see module docs)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = "rgb_array", **overrides: Any):
        config = config or EnvConfig()
        if overrides:
            config = EnvConfig(**{**config.__dict__, **overrides})
        config.validate()
        self.config = config
        self.render_mode = render_mode
        self.variant = VARIANTS.get(config.task)  # a task whose goal or object moves (stvla.envs.variants), or None
        base = self.variant.base if self.variant else config.task
        self.instruction = instruction_of(config.task)
        self._mw = _make_metaworld(base)
        self._expert = _make_expert(base)
        self._velocity = np.zeros(3)  # per step: the moving goal's or object's, for the expert's lead
        self._state = np.zeros(39)
        self._steps = 0

        model = self._mw.model
        size = config.image_size
        # Fast offscreen rendering: no multisampling and a tiny shadow map (set before the renderer exists).
        model.vis.quality.offsamples = 0
        model.vis.quality.shadowsize = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        self._camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, config.camera)
        if config.camera in _UPSIDE_DOWN_CAMERAS:
            # Quaternion product with a 180 degree turn about the camera's own z (optical) axis.
            rolled = np.zeros(4)
            mujoco.mju_mulQuat(rolled, model.cam_quat[self._camera_id].copy(), np.array([0.0, 0.0, 0.0, 1.0]))
            model.cam_quat[self._camera_id] = rolled
        if isinstance(self.variant, MovingObject):  # what is drawn of the moving body and the bodies below it
            self._moving_body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, self.variant.body)
            subtree = {b for b in range(model.nbody) if self._in_subtree(b, self._moving_body)}
            # (group array, index, its own group) of its visible geoms and sites (Meta-World's markers on it)
            self._shown = [(model.geom_group, g, int(model.geom_group[g])) for g in range(model.ngeom)
                           if model.geom_bodyid[g] in subtree and model.geom_group[g] < _HIDDEN_GROUP]
            self._shown += [(model.site_group, s, int(model.site_group[s])) for s in range(model.nsite)
                            if model.site_bodyid[s] in subtree and model.site_group[s] < _HIDDEN_GROUP]
        elif self.variant:  # a marker the camera sees move
            goal_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            model.site_size[goal_site][0] = self.variant.marker_radius
            self._goal_alpha = float(model.site_rgba[goal_site][3])  # restored when a hidden marker shows again
        self._renderer = RGBDRenderer(model, size, size)
        _track_for_exit(self)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            self._renderer.scene.flags[flag] = False
        self.depth_estimator = None
        if config.depth_model:
            # Imported here: torch and transformers load only in processes that use a depth model.
            from stvla.envs.depth_model import shared_depth_estimator
            self.depth_estimator = shared_depth_estimator(config.depth_model, config.depth_device)
        self.intrinsics = geometry.intrinsics_from_fov(float(model.cam_fovy[self._camera_id]), size, size)

        image = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(
            {
                F.OBS_RGB: image,
                F.OBS_DEPTH: gym.spaces.Box(0.0, config.depth_max, (size, size), np.float32),
                F.OBS_INTRINSICS: gym.spaces.Box(-np.inf, np.inf, (3, 3), np.float64),
                F.OBS_CAMERA_POSE: gym.spaces.Box(-np.inf, np.inf, (4, 4), np.float64),
                F.OBS_EE_POSITION: gym.spaces.Box(-np.inf, np.inf, (3,), np.float64),
                F.OBS_EE_PIXEL: gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
                F.OBS_STATE: gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                F.OBS_INSTRUCTION: gym.spaces.Text(max_length=256, charset=_INSTRUCTION_CHARSET),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    # --- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode. The same `seed` always gives the same start (object and goal positions)."""
        super().reset(seed=seed)
        if seed is not None:
            # Meta-World ignores reset(seed=...): its start positions come from the RNG seed() sets.
            self._mw.seed(int(seed))
        self._state, _ = self._mw.reset()
        # Meta-World places the goal marker after its last kinematics pass: without this the first frame
        # shows the marker where the previous episode's goal was.
        mujoco.mj_forward(self._mw.model, self._mw.data)
        self._steps = 0
        if self.variant:
            self._velocity = self.variant.draw_velocity(seed)
            self._show_moving()
        return self._observation(), {"success": False, "near_object": False, "grasped": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        if isinstance(self.variant, MovingObject):  # moved before the physics: the step's contacts and success see it
            self._move_object()
        self._state, reward, _, _, mw_info = self._mw.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        if isinstance(self.variant, MovingGoal):
            self._move_goal()
        if self.variant:
            self._show_moving()
        subgoals = has_subgoal(self.config.task)
        info = {
            "success": bool(mw_info.get("success", 0.0)),
            "near_object": subgoals and bool(mw_info.get("near_object", 0.0)),
            "grasped": subgoals and bool(mw_info.get("grasp_success", 0.0)),
        }
        truncated = self._steps >= self.config.max_episode_steps
        return self._observation(), float(reward), False, truncated, info

    def render(self) -> np.ndarray:
        return self._render_rgb_depth()[0]

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        _LIVE_ENVS.discard(self)

    # --- extras ------------------------------------------------------------------------------------
    def moving_thing(self) -> tuple[np.ndarray, bool, float] | None:
        """For a variant (stvla.envs.variants): where the goal or object it moves is now (world frame, the
        point its expert aims at), whether the latest frame hides it, and its extent in metres around that
        point; None for a plain task."""
        if not self.variant:
            return None
        return (np.array(self._state[self.variant.state_slice], dtype=np.float64), self.variant.hidden_at(self._steps),
                self.variant.extent)

    def expert_action(self, lead: bool = True) -> np.ndarray:
        """The Meta-World scripted expert's action for the current state. A moving goal or object is led
        (aimed at where it will be, from its velocity); `lead=False` gives the expert the current frame only:
        the goal or object where it is now, and nothing while it is hidden (the hand then holds still)."""
        state = self._state
        if self.variant and lead:
            state = state.copy()
            state[self.variant.state_slice] += self.variant.lead(self._velocity)
        with warnings.catch_warnings():
            # The experts warn on every step that their gains are high; we clip their actions anyway.
            warnings.simplefilter("ignore", UserWarning)
            action = np.clip(np.asarray(self._expert.get_action(state), dtype=np.float32), -1.0, 1.0)
        if self.variant and not lead and self.variant.hidden_at(self._steps):
            action[:3] = 0.0
        return action

    def _show_moving(self) -> None:
        """Draw the goal marker or the moving object, or not while the variant hides it."""
        hidden = self.variant.hidden_at(self._steps)
        if isinstance(self.variant, MovingObject):
            for groups, index, group in self._shown:  # collisions ignore the group: a hidden object is still there
                groups[index] = _HIDDEN_GROUP if hidden else group
        else:
            self._mw.model.site("goal").rgba[3] = 0.0 if hidden else self._goal_alpha

    def _in_subtree(self, body: int, root: int) -> bool:
        """Whether `body` is `root` or attached below it."""
        while body != root and body != 0:
            body = int(self._mw.model.body_parentid[body])
        return body == root

    def _move_object(self) -> None:
        """One step of the moving object: its body (with what hangs from it) and Meta-World's target with it."""
        model = self._mw.model
        position = model.body_pos[self._moving_body].copy()
        height = position[2]  # it slides on the table, at the height Meta-World put it
        low, high = (np.array([*self.variant.low, height]), np.array([*self.variant.high, height]))
        moved, self._velocity = self.variant.move(position, self._velocity, low, high)
        model.body_pos[self._moving_body] = moved
        self._mw._target_pos = np.asarray(self._mw._target_pos) + (moved - position)

    def _move_goal(self) -> None:
        """One step of the moving goal: Meta-World's target, its marker and the state the expert reads."""
        space = self._mw.goal_space
        goal, self._velocity = self.variant.move(np.array(self._mw._target_pos, dtype=np.float64),
                                                 self._velocity, space.low, space.high)
        self._mw._target_pos = goal
        self._mw.model.site("goal").pos = goal
        self._state = self._state.copy()
        self._state[-3:] = goal

    @property
    def camera_pose(self) -> np.ndarray:
        """World-from-camera 4x4 transform with OpenCV axes (MuJoCo cameras look along their -z)."""
        data = self._mw.data
        rotation = data.cam_xmat[self._camera_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
        return geometry.pose_from_rotation_translation(rotation, data.cam_xpos[self._camera_id])

    @property
    def ee_position(self) -> np.ndarray:
        return np.asarray(self._mw.tcp_center, dtype=np.float64).copy()

    def _render_rgb_depth(self) -> tuple[np.ndarray, np.ndarray]:
        renderer = self._renderer
        renderer.update_scene(self._mw.data, camera=self._camera_id)
        rgb, depth = renderer.render_rgb_depth()
        if self.depth_estimator is not None:  # the estimate replaces the rendered depth
            depth = self.depth_estimator(rgb)
        np.minimum(depth, self.config.depth_max, out=depth)
        return rgb, depth

    def _observation(self) -> dict[str, Any]:
        rgb, depth = self._render_rgb_depth()
        pose = self.camera_pose
        ee = self.ee_position
        return {
            F.OBS_RGB: rgb,
            F.OBS_DEPTH: depth,
            F.OBS_INTRINSICS: self.intrinsics.copy(),
            F.OBS_CAMERA_POSE: pose,
            F.OBS_EE_POSITION: ee,
            F.OBS_EE_PIXEL: geometry.project_world_points(ee, self.intrinsics, pose),
            F.OBS_STATE: self._state[:4].astype(np.float32),
            F.OBS_INSTRUCTION: self.instruction,
        }


class RGBDRenderer(mujoco.Renderer):
    """MuJoCo's offscreen renderer, reading colour and metric depth from one pass over the scene.

    `mujoco.Renderer` draws the scene once per image it returns, so colour and depth cost two passes;
    rendering is most of a simulated step's time. The depth buffer of the colour pass holds the same
    depths (a test holds the two ways equal, pixel for pixel)."""

    def render_rgb_depth(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 colour and (H, W) float32 depth in metres along the optical axis."""
        if self._gl_context:
            self._gl_context.make_current()
        mujoco.mjr_render(self._rect, self._scene, self._mjr_context)
        rgb = np.empty((self.height, self.width, 3), np.uint8)
        buffer = np.empty((self.height, self.width), np.float32)
        mujoco.mjr_readPixels(rgb, buffer, self._rect, self._mjr_context)
        # OpenGL's rows run bottom-up; the buffer holds reversed-Z window depths (1 at the near plane, 0 at
        # the far one), undone here as the base class undoes them (in float64, then cast back).
        extent = self.model.stat.extent
        near, far = np.float32(self.model.vis.map.znear * extent), np.float32(self.model.vis.map.zfar * extent)
        scale = np.float32(-0.5) * (-(np.float32(2) * far * near) / (far - near))
        offset = np.float32(-0.5) * (-(far + near) / (far - near)) - np.float32(0.5)
        depth = (scale / (buffer.astype(np.float64) + offset)).astype(np.float32)
        return np.flipud(rgb).copy(), np.flipud(depth).copy()


# Renderers left to the garbage collector at interpreter exit outlive their EGL display and print
# errors. MuJoCo registers the display's teardown when the first renderer is made; an exit hook
# registered after it runs before it (atexit is last-in, first-out) and closes every live env.
_LIVE_ENVS: "weakref.WeakSet[MetaWorldRGBDEnv]" = weakref.WeakSet()


def _close_live_envs() -> None:
    for env in list(_LIVE_ENVS):
        env.close()


def _track_for_exit(env: MetaWorldRGBDEnv) -> None:
    if not _LIVE_ENVS and not getattr(_track_for_exit, "registered", False):
        atexit.register(_close_live_envs)
        _track_for_exit.registered = True
    _LIVE_ENVS.add(env)

_INSTRUCTION_CHARSET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.-'")


def has_subgoal(task: str) -> bool:
    """Whether Meta-World defines a sub-goal (near the object, grasped) for `task` (a variant: its base task's)."""
    return (VARIANTS[task].base if task in VARIANTS else task) not in NO_SUBGOAL_TASKS


def instruction_of(task: str) -> str:
    """The English instruction of a task or task variant."""
    return VARIANTS[task].instruction if task in VARIANTS else INSTRUCTIONS[task]


def parse_tasks(text: str) -> list[str]:
    """Comma-separated task names, "mt10" or "all", as a checked list (an unknown name lists the valid ones)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if [n.lower() for n in names] == ["mt10"]:
        names = list(MT10_TASKS)
    elif [n.lower() for n in names] == ["all"]:
        names = list(TASKS)
    unknown = [t for t in names if t not in TASKS and t not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or text!r}; valid tasks: mt10, all, "
                         f"{', '.join(TASKS + tuple(VARIANTS))}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # the same seeds twice: its episodes would count as independent ones
        raise ValueError(f"task {twice[0]!r} is given twice in {text!r}: name each task once")
    return names


def make_env(task: str = "pick-place-v3", **config_fields: Any) -> MetaWorldRGBDEnv:
    """Create the RGB-D environment for one task, e.g. `make_env("push-v3", image_size=224)`."""
    return MetaWorldRGBDEnv(EnvConfig(task=task, **config_fields))
