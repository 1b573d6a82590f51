"""Every feature key of the toolkit, in one place (LeRobot keeps its own in `utils/constants.py`).

Two vocabularies, and the one map between them:

- dataset features, in LeRobot's dotted names: what an episode store records, what a policy's input
  processor reads and what the model's batch holds (`observation.state`, `action`, ...);
- the environment's observation keys (the gymnasium Dict space of stvla.envs: `rgb`, `proprio`, ...),
  which `FEATURE_OF_OBSERVATION` maps to the dataset features they are recorded as.

Other modules import these names; none spells a key as a string literal.
"""

from __future__ import annotations

# --- dataset features (recorded; LeRobot v3 names) -------------------------------------------------------
RGB = "observation.images.rgb"  # (H, W, 3) uint8 camera image, stored as video
DEPTH = "observation.depth"  # (H, W) float32 metric depth in metres
STATE = "observation.state"  # (S,) proprio state: end-effector xyz and gripper
EE_POSITION = "observation.ee.position"  # (3,) end-effector position, world frame
EE_PIXEL = "observation.ee.pixel"  # (2,) end-effector (u, v) pixel in the image
INTRINSICS = "observation.camera.intrinsics"  # (3, 3) camera matrix K
CAMERA_POSE = "observation.camera.pose"  # (4, 4) camera-to-world transform
ACTION = "action"  # (D,) the action taken at this frame
REWARD = "next.reward"  # (1,) reward after the action
SUCCESS = "next.success"  # (1,) task solved after the action
NEAR_OBJECT = "next.near_object"  # (1,) sub-goal: gripper near the object after the action
GRASPED = "next.grasped"  # (1,) sub-goal: object grasped after the action
# LeRobot's index features, which every episode store adds to each frame.
TIMESTAMP = "timestamp"  # (1,) seconds since the episode start
FRAME_INDEX = "frame_index"  # (1,) frame number within the episode
EPISODE_INDEX = "episode_index"  # (1,) the frame's episode
INDEX = "index"  # (1,) frame number within the dataset
TASK_INDEX = "task_index"  # (1,) row of meta/tasks.parquet

# --- per-frame inputs a policy's processor derives (never recorded) ---------------------------------------
TASK = "task"  # the instruction string of each frame (LeRobot's batch key, and meta/tasks.parquet's index)
TRACED_DEPTH = "observation.depth.traced"  # (H, W) float32 depth with the traces drawn in (ST-VLA)
TRACED_RGB = "observation.images.rgb_traced"  # (H, W, 3) uint8 image with the traces drawn on (TraceVLA)
HAS_TRACES = "observation.has_traces"  # () bool: the tracer chose at least one trace at this frame
PREVIOUS_RGB = "observation.images.rgb_previous"  # (k, H, W, 3) uint8: the k frames before this one, oldest first (frame stacking)
TRACE_POINTS = "observation.trace_points"  # (K, b, 4) float32: the K chosen traces' last b points (camera-frame xyz in metres, or u v in [-1, 1] and 0), the last channel 1 where a point exists (trace tokens)
STATE_HISTORY = "observation.state_history"  # (HISTORY_LENGTH, S) the episode's latest states (LLARVA)

# --- model batch entries beside the features above ---------------------------------------------------------
LANGUAGE = "observation.language"  # (B, 384) sentence embedding of each prompt
PROMPT = "observation.prompt"  # list of B structured prompt strings (LLARVA)
ACTION_IS_PAD = "action_is_pad"  # (B, chunk) steps of the action chunk past the episode end
TRACE_TARGET = "trace_target"  # (B, P, 2) future end-effector pixels (LLARVA's trace targets)
TRACE_MASK = "trace_mask"  # (B, P) which trace targets exist
# A rank's share of a global batch (stvla.train.distributed) carries what the loss divides by.
LOSS_COUNT_ACTIONS = "loss_count.actions"  # () float: non-padded action steps in the global batch / world size
LOSS_COUNT_TRACES = "loss_count.traces"  # () float: trace targets in the global batch / world size

# --- environment observation keys (stvla.envs' gymnasium Dict space) ---------------------------------------
OBS_RGB = "rgb"
OBS_DEPTH = "depth"
OBS_STATE = "proprio"
OBS_EE_POSITION = "ee.position"
OBS_EE_PIXEL = "ee.pixel"
OBS_INTRINSICS = "camera.intrinsics"
OBS_CAMERA_POSE = "camera.pose"
OBS_INSTRUCTION = "instruction"

# --- a policy's further cameras (`--camera front,wrist`): RGB only, read beside the first camera's ------------
MAX_CAMERAS = 8  # cameras a policy may read


def camera_feature(index: int) -> str:
    """The toolkit's name of a policy's camera `index`: RGB for the first (the one with the depth, the traces
    and Ego3D), then observation.images.rgb1, rgb2, ... for the others (each (H, W, 3) uint8)."""
    if not 0 <= index < MAX_CAMERAS:
        raise ValueError(f"camera index {index}: a policy reads 1 to {MAX_CAMERAS} cameras")
    return RGB if index == 0 else f"{RGB}{index}"


EXTRA_CAMERAS = tuple(camera_feature(i) for i in range(1, MAX_CAMERAS))

# Dataset feature <- the environment observation it records.
FEATURE_OF_OBSERVATION: dict[str, str] = {
    RGB: OBS_RGB,
    DEPTH: OBS_DEPTH,
    STATE: OBS_STATE,
    EE_POSITION: OBS_EE_POSITION,
    EE_PIXEL: OBS_EE_PIXEL,
    INTRINSICS: OBS_INTRINSICS,
    CAMERA_POSE: OBS_CAMERA_POSE,
}


def observation_key(feature: str) -> str:
    """The environment observation (or a client's message key) a policy's input `feature` is read from: the
    recorded ones', and rgb1, rgb2, ... for the further cameras (which no simulator camera records)."""
    if feature in EXTRA_CAMERAS:
        return f"{OBS_RGB}{EXTRA_CAMERAS.index(feature) + 1}"
    return FEATURE_OF_OBSERVATION[feature]


# No robot's actions or states are numbers this large (encoder ticks, millimetres and radians are far below):
# beyond it a value is damage, and an action unnormalised with it would command anything.
MAX_MAGNITUDE = 1e9
