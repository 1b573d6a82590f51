"""What `stvla serve` accepts, checked exactly before anything is stepped: a client's message against the
policy's contract. The processor's own checks (stvla.policies.processor) come after these; here is what
only a message from outside needs: types as the wire carries them (booleans that are booleans, arrays that
are arrays, no msgpack extension types), the contract's dtypes (proprio and intrinsics floats, never bools
or integers), values finite after the cast to the model's float32, and plausible ranges (depth in metres
over enough of the image, intrinsics of a real pinhole camera for the image size, proprio of a robot).

Every refusal is a one-line ValueError naming the field and the rule, never repeating what was sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stvla import features as F
from stvla import geometry

MESSAGE_KEYS = ("type", "observation", "reset", "infer")  # what a message may hold
MAX_OBSERVATION_KEYS = 32  # keys an observation may have (the policy reads at most a handful)
MAX_KEY_CHARS = 128  # the longest key accepted anywhere in a message
MAX_IGNORED_BYTES = 64 * 1024  # what an observation may carry beyond what the policy reads
MAX_NESTING = 4  # maps and lists inside a message, at most this deep
PLAUSIBLE_STATE_ABS = 1e4  # a proprio value beyond this is no robot's (metres, radians, even millimetres)
DEPTH_MEDIAN_RANGE_M = (0.02, 10.0)  # a scene in front of a robot's camera, in metres
DEPTH_MAX_M = 1000.0  # no reading is farther; beyond: not metres (or garbage)
MIN_VALID_DEPTH_SHARE = 0.1  # of the pixels, with a reading (finite, > 0)
FOCAL_RANGE = (0.05, 50.0)  # fx, fy as a multiple of the image's larger side (fields of view ~1 to ~170 degrees)
MAX_PIXEL_ASPECT = 2.0  # fx / fy of a real camera's pixels, either way


def check_types(value: Any, depth: int = 0) -> None:
    """Only maps, lists, strings, bytes, numbers, booleans, None and arrays, not too deep; keys short."""
    if depth > MAX_NESTING:
        raise ValueError(f"the message nests deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
                raise ValueError(f"the message has a key that is not a string of at most {MAX_KEY_CHARS} characters")
            check_types(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_types(item, depth + 1)
    elif not (value is None or isinstance(value, (bool, int, float, str, bytes, np.ndarray))):
        raise ValueError("the message holds a msgpack extension type (e.g. a timestamp); none is accepted")


def flag(message: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean field: absent (the default) or a real boolean, never a string or a number."""
    value = message.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"'{key}' must be true or false (a msgpack boolean), got {type(value).__name__}")
    return value


def check_message(message: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """A step message -> (observation, reset, infer), its form checked."""
    check_types(message)
    unknown = len([key for key in message if key not in MESSAGE_KEYS])
    if unknown:
        raise ValueError(f"a step message holds {', '.join(MESSAGE_KEYS)} only; it has {unknown} other key(s)")
    observation = message.get("observation")
    if not isinstance(observation, dict):
        raise ValueError("a step needs an 'observation' map")
    if len(observation) > MAX_OBSERVATION_KEYS:
        raise ValueError(f"an observation has at most {MAX_OBSERVATION_KEYS} keys, got {len(observation)}")
    return observation, flag(message, "reset", False), flag(message, "infer", True)


def check_observation(observation: dict[str, Any], processor: Any) -> None:
    """Every input the processor will read, against the contract; what it will not read, bounded."""
    from stvla.policies.processor import _observed  # torch: only where a policy is served
    from stvla.policies.text import check_instruction

    sent = processor.sent_features()
    aliases = processor.camera.features
    read: set[str] = set()
    arrays = {}
    for feature in sent:
        keys = [F.observation_key(feature), feature] + ([aliases[feature]] if feature in aliases else [])
        present = [key for key in keys if key in observation]
        if feature == F.INTRINSICS and not present and processor.camera.intrinsics:
            continue  # the policy keeps its camera
        value = _observed(observation, feature, F.observation_key(feature), aliases.get(feature))
        read.update(present[:1])
        if not isinstance(value, np.ndarray):
            raise ValueError(f"observation {feature!r} must be an array, got {type(value).__name__}")
        arrays[feature] = value
    for feature, value in arrays.items():
        where = f"observation {feature!r}"
        if feature == F.STATE:
            check_state(value, where)
        elif feature == F.DEPTH:
            check_depth(value, where)
        elif feature == F.INTRINSICS:
            rgb = arrays.get(F.RGB)
            check_camera_matrix(value, rgb.shape[:2] if rgb is not None and rgb.ndim >= 2 else None, where)
        elif value.dtype != np.uint8:
            raise ValueError(f"{where} must be uint8 RGB (0-255), got {value.dtype}")
    instruction_key = next((key for key in (F.OBS_INSTRUCTION, F.TASK) if key in observation), None)
    if instruction_key is None:
        raise ValueError(f"the observation has no {F.OBS_INSTRUCTION!r} or {F.TASK!r}")
    check_instruction(observation[instruction_key], f"observation {F.OBS_INSTRUCTION!r}")
    read.add(instruction_key)
    ignored = sum(_size(value) + len(key) for key, value in observation.items() if key not in read)
    if ignored > MAX_IGNORED_BYTES:
        raise ValueError(f"the observation carries {ignored} bytes the policy does not read (at most "
                         f"{MAX_IGNORED_BYTES}): send only the contract's inputs")


def _size(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + _size(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_size(v) for v in value) + len(value)
    return 8


def _as_float32(value: np.ndarray, where: str, what: str) -> np.ndarray:
    """A float array as the model's float32, refused when a value is not finite there (before or after)."""
    if value.dtype.kind != "f":
        raise ValueError(f"{where} must be {what} as floats (float16/32/64), got {value.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        return value.astype(np.float32)


def check_state(value: np.ndarray, where: str) -> None:
    cast = _as_float32(value, where, "the robot's state")
    if not np.isfinite(cast).all():
        bad = np.flatnonzero(~np.isfinite(cast))
        raise ValueError(f"{where} must be finite numbers, got non-finite values (in float32) at {bad[:5].tolist()}")
    if cast.size and float(np.abs(cast).max()) > PLAUSIBLE_STATE_ABS:
        raise ValueError(f"{where} has a value beyond +-{PLAUSIBLE_STATE_ABS:g}: not a robot's state (units?)")


def check_depth(value: np.ndarray, where: str) -> None:
    """Metric depth (stvla.geometry.check_metric_depth), and more strictly: enough of the image read, a
    median of a scene in front of a robot, no reading beyond DEPTH_MAX_M."""
    valid, median = geometry.check_metric_depth(value, where)
    share = valid.size / max(value.size, 1)
    if share < MIN_VALID_DEPTH_SHARE:
        raise ValueError(f"{where}: only {share:.1%} of the pixels have a depth reading (at least "
                         f"{MIN_VALID_DEPTH_SHARE:.0%} needed)")
    low, high = DEPTH_MEDIAN_RANGE_M
    if not low <= median <= high:
        raise ValueError(f"{where}: depth's median is {median:.3g}, outside the {low:g}-{high:g} m of a scene in "
                         f"front of a robot (metres? decimetres or centimetres would be off by 10 or 100)")
    if float(valid.max()) > DEPTH_MAX_M:
        raise ValueError(f"{where}: depth has readings beyond {DEPTH_MAX_M:g} m (use 0, NaN or inf for no reading)")


def check_camera_matrix(K: np.ndarray, image_hw: tuple[int, int] | None, where: str) -> None:
    """A real pinhole camera for images of `image_hw`: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] as floats, finite
    in float32, zero skew, focal lengths and principal point in a sane range for the image."""
    if K.shape != (3, 3):
        raise ValueError(f"{where}: intrinsics must be a (3, 3) matrix, got shape {list(K.shape)}")
    cast = _as_float32(K, where, "intrinsics")
    if not np.isfinite(cast).all():
        raise ValueError(f"{where}: intrinsics have values that are not finite as float32")
    if cast[0, 1] != 0 or cast[1, 0] != 0 or cast[2, 0] != 0 or cast[2, 1] != 0 or cast[2, 2] != 1:
        raise ValueError(f"{where}: intrinsics must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (zero skew)")
    fx, fy, cx, cy = (float(cast[0, 0]), float(cast[1, 1]), float(cast[0, 2]), float(cast[1, 2]))
    if image_hw is None:
        return
    height, width = image_hw
    side = max(height, width)
    low, high = FOCAL_RANGE[0] * side, FOCAL_RANGE[1] * side
    if not (low <= fx <= high and low <= fy <= high):
        raise ValueError(f"{where}: focal lengths fx {fx:.4g}, fy {fy:.4g} are outside {low:.4g}-{high:.4g} px, "
                         f"no camera for {height}x{width} images")
    if not 1 / MAX_PIXEL_ASPECT <= fx / fy <= MAX_PIXEL_ASPECT:
        raise ValueError(f"{where}: fx / fy is {fx / fy:.3g}; a camera's pixels are near square")
    if not (-0.5 <= cx <= width - 0.5 and -0.5 <= cy <= height - 0.5):
        raise ValueError(f"{where}: principal point ({cx:.4g}, {cy:.4g}) is outside the {height}x{width} image")
