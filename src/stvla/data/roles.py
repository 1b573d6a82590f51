"""Which of a dataset's features play which part: the camera (and any further cameras), the depth, the intrinsics.

A policy reads its inputs by the toolkit's names (stvla.features: `observation.images.rgb`,
`observation.depth`, `observation.camera.intrinsics`). A dataset from a user's robot has its own names
(`observation.images.front`, `observation.images.front_depth`) and often no depth or intrinsics.
`DataConfig` says which stored feature is which; `resolve_roles` checks it against the dataset's
features and picks the defaults (the only camera, the only depth map), with a one-line error naming
what the dataset has when the choice is missing or ambiguous.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field

import numpy as np

from stvla import features as F
from stvla.config import KEY_NEUTRAL
from stvla.geometry import intrinsics_from_fov
from stvla.image_fit import check_fit


@dataclass
class DataConfig:
    camera: str = ""  # the RGB stream's feature key; "" = observation.images.rgb, else the dataset's only camera; several comma-separated (front,wrist): the first has the depth and the traces
    depth: str = ""  # the depth feature's key; "" = observation.depth, else the first camera's own (<camera>_depth), else the dataset's only depth map (if any, and not another camera's)
    intrinsics: str = ""  # "fx,fy,cx,cy" in pixels, for a dataset that records no camera intrinsics
    fov: float = 0.0  # or the camera's vertical field of view in degrees (centred principal point)
    cache_dir: str = ""  # where training caches go; "" = $STVLA_CACHE, else ~/.cache/stvla
    image_fit: str = field(default="crop", metadata=KEY_NEUTRAL)  # how images of another size or aspect become the model's square: "crop" (centred) or "pad" (zeros; depth 0 = no reading)

    def __post_init__(self) -> None:
        check_fit(self.image_fit)
        if self.intrinsics:  # checked where the config is made, so every command refuses what training would
            _parse_intrinsics(self.intrinsics)
        if not (self.fov == 0 or 0 < self.fov < 180):  # NaN fails both
            raise ValueError(f"--fov {self.fov}: a vertical field of view in degrees, in (0, 180) (0 = not given)")

    @property
    def cameras(self) -> list[str]:
        """The camera keys given, in order ([""]: choose the only camera)."""
        return [name.strip() for name in self.camera.split(",")] if self.camera else [""]


def is_depth_feature(key: str, feature: dict) -> bool:
    """LeRobot's mark of a depth map (`info.is_depth_map`), or stvla's own float32 depth column."""
    return bool((feature.get("info") or {}).get("is_depth_map")) or key == F.DEPTH


def is_camera_feature(key: str, feature: dict) -> bool:
    """A colour image stream (video or images) that is not a depth map."""
    shape = feature.get("shape", [])
    return feature.get("dtype") in ("video", "image") and len(shape) == 3 and shape[-1] == 3 \
        and not is_depth_feature(key, feature)


@dataclass(frozen=True)
class Roles:
    """Stored feature key of each role the toolkit reads by its own name, and the intrinsics to add."""

    stored: dict[str, str]  # toolkit feature key -> the dataset's feature key
    intrinsics: np.ndarray | None  # (3, 3) camera matrix for every frame, when the dataset records none


def _parse_intrinsics(text: str) -> np.ndarray:
    try:
        fx, fy, cx, cy = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--intrinsics {text!r}: expected four numbers fx,fy,cx,cy (pixels)") from None
    if not all(math.isfinite(value) for value in (fx, fy, cx, cy)):
        raise ValueError(f"--intrinsics {text!r}: every value must be a finite number of pixels")
    if fx <= 0 or fy <= 0:
        raise ValueError(f"--intrinsics {text!r}: focal lengths must be positive")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float32)


def _choose(kind: str, option: str, given: str, canonical: str, candidates: list[str], features: dict,
            where: str, required: bool) -> str | None:
    if given:
        if given not in features:
            raise ValueError(f"{where}: {option} {given!r} is not a feature of the dataset; its {kind} features: "
                             f"{candidates or 'none'}")
        if given not in candidates:
            raise ValueError(f"{where}: {option} {given!r} is not a {kind} feature "
                             f"(dtype {features[given].get('dtype')}, shape {features[given].get('shape')}); "
                             f"its {kind} features: {candidates or 'none'}")
        return given
    if canonical in candidates:
        return canonical
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise ValueError(f"{where} has several {kind} features {candidates}; choose one with {option} KEY"
                         + (" (or several: --camera A,B; the first has the depth)" if kind == "camera" else ""))
    if required:
        raise ValueError(f"{where} has no {kind} feature (image or video with 3 channels); it has {sorted(features)}")
    return None


def resolve_roles(features: dict[str, dict], config: DataConfig, where: str) -> Roles:
    """The roles of `features` (a dataset's info.json features) under `config`; `where` names the dataset."""
    cameras = [key for key, f in features.items() if is_camera_feature(key, f)]
    depths = [key for key, f in features.items() if is_depth_feature(key, f)]
    given = config.cameras
    if len(given) > F.MAX_CAMERAS or len(set(given)) < len(given) or (len(given) > 1 and "" in given):
        raise ValueError(f"--camera {config.camera!r}: expected 1 to {F.MAX_CAMERAS} different camera features, "
                         f"comma-separated; the dataset's camera features: {cameras or 'none'}")
    stored = {F.camera_feature(i): _choose("camera", "--camera", name, F.RGB, cameras, features, where, required=True)
              for i, name in enumerate(given)}
    # Else the first camera's own depth, `<camera>_depth` (as `stvla depth` and most recorders name it), also
    # among several; never another camera's by default: it does not show what the first camera shows.
    paired = f"{stored[F.RGB]}_depth"
    depth = _choose("depth", "--depth", config.depth, F.DEPTH if F.DEPTH in depths else paired, depths, features,
                    where, required=False)
    owner = next((key for key in cameras if depth == f"{key}_depth"), None)
    if not config.depth and owner is not None and owner != stored[F.RGB]:
        raise ValueError(f"{where}: the depth feature {depth!r} is camera {owner!r}'s, not the first --camera "
                         f"{stored[F.RGB]!r}'s; put {owner!r} first in --camera, or give --depth {depth} if it is "
                         f"registered to {stored[F.RGB]!r}")
    if depth is not None:
        stored[F.DEPTH] = depth
    intrinsics = None
    if config.intrinsics and config.fov:
        raise ValueError("give the camera as --intrinsics or as --fov, not both")
    if F.INTRINSICS in features:
        if config.intrinsics or config.fov:
            raise ValueError(f"{where} records {F.INTRINSICS}; --intrinsics and --fov are for datasets without them")
    elif config.intrinsics:
        intrinsics = _parse_intrinsics(config.intrinsics)
    elif config.fov:
        height, width = features[stored[F.RGB]]["shape"][:2]
        intrinsics = intrinsics_from_fov(config.fov, height, width).astype(np.float32)
    return Roles(stored, intrinsics)
