"""A robot's own observation formats turned into what a served policy's contract says, on the robot side.

    message = to_contract({"observation.images.front": rgb_chw_float, "depth": depth_mm_uint16,
                           "camera.intrinsics": K, "proprio": q, "instruction": "open the drawer"},
                          client.contract, depth_scale=0.001)

Every key comes from the contract (`input_features`, `observation_keys`, and the dataset's own feature
names where it gives them): a value may be sent under the environment's name (`rgb`, `depth`, `proprio`,
`camera.intrinsics`, `instruction`), the toolkit's feature name (`observation.images.rgb`, ...) or the
name the policy's dataset recorded it under (`observation.images.front`, ...: the contract's
`camera.features`); it leaves under the name the contract's `observation_keys` gives. Keys the policy
does not read are left out of the message; the intrinsics may be, when the policy keeps its camera's
(the contract's `camera.intrinsics`: trained with --fov or --intrinsics).

What is converted, and only when it can be done without a guess:

- an image (the contract's uint8 (H, W, 3) features): channels-first (3, H, W) -> (H, W, 3); floats in
  [0, 1] -> uint8 (rounded, x 255); floats or integers holding whole numbers in [0, 255] -> uint8 as they
  are. Floats in [0, 1] are always read as the [0, 1] scale (an image in [0, 255] whose every value is 0
  or 1 is black either way to the eye, and no camera driver gives one). Anything else (negative values,
  fractions above 1, values above 255, NaN) is an error, not rescaled.
- depth: integers (a RealSense's or Kinect's uint16) -> float32 metres, times `depth_scale` metres per
  unit (0.001: millimetres, RealSense's default depth unit); (H, W, 1) or (1, H, W) -> (H, W). Floats are
  metres and pass as they are (the server refuses depth that only millimetres explain).
- other arrays (state, intrinsics) as numpy arrays, lists included; the instruction as it is.

Image sizes pass as they are: the server's processor fits a camera's images to the model's input.
Anything not convertible is a one-line ValueError naming the key and what it holds. numpy only, and
stvla.features (no torch): the robot side imports this.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stvla import features as F

REALSENSE_DEPTH_SCALE = 0.001  # metres per unit of integer depth: millimetres, a RealSense's default depth unit


def _is_image(spec: dict) -> bool:
    shape = spec.get("shape", [])
    return spec.get("dtype") == "uint8" and len(shape) == 3 and shape[-1] == 3


def camera_of(contract: dict[str, Any]) -> str:
    """The input feature of the contract's first camera (the one with the depth and the traces, which its
    `camera` entry describes): its first uint8 (H, W, 3) input, in the contract's order."""
    inputs = contract["input_features"]
    images = [feature for feature, spec in inputs.items() if _is_image(spec)]
    if not images:
        raise ValueError(f"the policy's contract has no camera input (uint8 (H, W, 3)); its inputs: {sorted(inputs)}")
    return images[0]


def model_image_size(contract: dict[str, Any]) -> int:
    """The side of the model's square images (what a simulator renders for it): the contract's camera entry
    says it; a contract without one reads its camera at that size."""
    side = (contract.get("camera") or {}).get("image_size")
    return int(side) if side else int(contract["input_features"][camera_of(contract)]["shape"][0])


def _dataset_names(contract: dict[str, Any]) -> dict[str, str]:
    """Input feature -> the name the policy's dataset recorded it under, where the contract gives one."""
    return dict((contract.get("camera") or {}).get("features") or {})


def _optional(contract: dict[str, Any]) -> set[str]:
    """Inputs a message may leave out: the intrinsics, when the policy keeps its camera's (trained with
    --fov or --intrinsics, which the server then uses)."""
    return {F.INTRINSICS} if (contract.get("camera") or {}).get("intrinsics") else set()


def names_of(contract: dict[str, Any]) -> dict[str, list[str]]:
    """Each input (and the instruction) -> every key a message may hold it under, the contract's
    `observation_keys` name first (the one it is sent as)."""
    observation_keys = contract["observation_keys"]
    dataset = _dataset_names(contract)
    out: dict[str, list[str]] = {}
    for feature in [*contract["input_features"], F.TASK]:
        candidates = [observation_keys.get(feature, feature), feature, dataset.get(feature)]
        out[feature] = list(dict.fromkeys(name for name in candidates if name))  # in order, each once
    return out


def _rgb(value: Any, key: str) -> np.ndarray:
    image = np.asarray(value)
    what = f"observation {key!r}"
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"{what}: expected an image (H, W, 3) or (3, H, W), got shape {list(image.shape)}")
    if image.shape[-1] != 3:  # (3, H, W): channels first (the (H, W, 3) reading wins when both fit)
        image = np.ascontiguousarray(np.moveaxis(image, 0, -1))
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind not in "fiu":
        raise ValueError(f"{what}: an image must hold numbers, got {image.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(f"{what}: the {image.dtype} image has non-finite values")
    low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if low < 0:
        raise ValueError(f"{what}: the {image.dtype} image has negative values (min {low:.4g}); send uint8 "
                         f"0-255 or floats in [0, 1]")
    if image.dtype.kind == "f" and high <= 1.0:
        return np.rint(np.asarray(image, np.float64) * 255.0).astype(np.uint8)
    if high <= 255 and (image.dtype.kind in "iu" or np.array_equal(image, np.rint(image))):
        return image.astype(np.uint8)
    raise ValueError(f"{what}: the {image.dtype} image holds values up to {high:.4g}"
                     + (" that are not whole numbers" if high <= 255 else "")
                     + ": neither [0, 1] nor 0-255 (send uint8, or floats in [0, 1])")


def _depth(value: Any, key: str, depth_scale: float) -> np.ndarray:
    depth = np.asarray(value)
    if depth.ndim == 3 and 1 in (depth.shape[0], depth.shape[-1]):
        depth = depth[..., 0] if depth.shape[-1] == 1 else depth[0]
    if depth.ndim != 2:
        raise ValueError(f"observation {key!r}: expected a depth map (H, W), (H, W, 1) or (1, H, W), got shape "
                         f"{list(np.shape(value))}")
    if depth.dtype.kind in "iu":
        return (np.asarray(depth, np.float64) * depth_scale).astype(np.float32)
    if depth.dtype.kind != "f":
        raise ValueError(f"observation {key!r}: depth must be numbers (integer units or float metres), got "
                         f"{depth.dtype}")
    return depth


def to_contract(observation: dict[str, Any], contract: dict[str, Any],
                depth_scale: float = REALSENSE_DEPTH_SCALE) -> dict[str, Any]:
    """`observation` (a robot driver's arrays under any of the names `names_of` lists) as the message the
    contract asks for: each input under its `observation_keys` name, in the dtype and layout it reads.
    `depth_scale`: metres per unit of integer depth (0.001 for millimetres)."""
    if not isinstance(observation, dict):
        raise ValueError(f"an observation must be a dict of arrays, got {type(observation).__name__}")
    if not depth_scale > 0:
        raise ValueError(f"depth_scale must be > 0 (metres per unit of integer depth), got {depth_scale}")
    inputs, optional = contract["input_features"], _optional(contract)
    message: dict[str, Any] = {}
    for feature, names in names_of(contract).items():
        given = [name for name in names if name in observation]
        if not given and feature in optional:
            continue
        if not given:
            raise ValueError(f"the observation has no {' or '.join(map(repr, names))}: the policy reads it; it "
                             f"has {sorted(map(str, observation))}")
        if len(given) > 1:
            raise ValueError(f"the observation holds {feature!r} twice, as {' and '.join(map(repr, given))}: send "
                             f"one")
        key, value = given[0], observation[given[0]]
        spec = inputs.get(feature, {})
        if feature == F.TASK:
            converted = value
        elif _is_image(spec):
            converted = _rgb(value, key)
        elif feature == F.DEPTH:
            converted = _depth(value, key, depth_scale)
        else:
            converted = value if isinstance(value, np.ndarray) else np.asarray(value)
        message[names[0]] = converted
    return message
