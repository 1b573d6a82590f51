"""A policy's input processor (LeRobot's word): its input contract, and the one place where an environment
observation or a recorded frame becomes the model's inputs.

    processor.reset()                              # at every episode start (control)
    frame = processor.observation_frame(obs)       # env observation (or a client's message) -> one frame in
                                                   # dataset feature keys; steps the tracer and the history
    inputs = processor.model_inputs(frames)        # frames (batch-major) -> the model's tensors

Training reads the same frames from a dataset (stvla.train.samples): the recorded features, plus what
`trace_frame` adds, cached by running it along every episode from its first frame exactly as control
runs it. Both paths end in `model_inputs`, so the model sees the same inputs for the same frames (a
test per policy type holds this).

What differs between the policy types is said by the processor beside each policy (spatialvla.py,
tracevla.py, st.py, tracetokens.py, llarva.py): which depth Ego3D encodes, TraceVLA's traced image and
its prompt, the trace points handed over as tokens, LLARVA's structured prompt. A saved policy writes its contract (`contract()`) to processor.json beside
its config, for whoever feeds it from outside (a robot client).

A camera of another size or aspect than the model's square input (`CameraConfig`, kept in the policy's
config) is fitted here at control time exactly as the training reader fitted it (stvla.image_fit): a
client sends the camera's own images, depth and intrinsics, and may name them as the dataset did.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from stvla import features as F
from stvla import geometry
from stvla.config import config_key
from stvla.image_fit import check_fit, fit_depth, fit_intrinsics, fit_rgb
from stvla.policies.prompt import HISTORY_LENGTH
from stvla.policies.text import check_instruction, instruction_embeddings
from stvla.traces import OnlineTracer, TraceConfig, TraceOutput
from stvla.traces.points import present_traces, trace_point_array

CONTRACT_FILE = "processor.json"


@dataclass
class CameraConfig:
    """The cameras a policy was trained on, as a client sends them (the default: the model's square size,
    the toolkit's names; what the simulator gives). Filled by the trainer from the dataset."""

    sizes: dict[str, list[int]] = field(default_factory=dict)  # [height, width] of each image input (cameras, depth) as recorded and sent, where not the model's square
    image_fit: str = "crop"  # how those images became the model's square (stvla.image_fit): crop or pad
    intrinsics: tuple[float, ...] = ()  # fx, fy, cx, cy at the first camera's size as given for training (--fov, --intrinsics), used when a client sends none; () = the dataset recorded them
    features: dict[str, str] = field(default_factory=dict)  # the dataset's own name of each input (observation.images.rgb -> observation.images.front), accepted in a client's message

    def __post_init__(self) -> None:
        check_fit(self.image_fit, "camera.image_fit")
        if len(self.intrinsics) not in (0, 4):
            raise ValueError(f"camera.intrinsics {list(self.intrinsics)}: expected fx, fy, cx, cy or none")


class InputProcessor:
    """The SpatialVLA-style inputs: RGB, Ego3D of the raw depth, the instruction's sentence embedding, the
    proprio state. Subclasses change what their policy type changes."""

    depth_source: ClassVar[str] = "raw"  # the depth Ego3D encodes: "raw" or "traced" (ST-VLA)
    uses_traced_rgb: ClassVar[bool] = False  # TraceVLA's second, traced image
    uses_state_history: ClassVar[bool] = False  # LLARVA's prompt: the last HISTORY_LENGTH proprio states

    def __init__(self, config: Any, policy_name: str):
        """`config`: the policy's config (its `vla` model config, and `traces` for a traced policy)."""
        self.config = config
        self.policy_name = policy_name
        self.tracer = OnlineTracer(self.trace_config) if self.trace_config is not None else None
        self.last_trace: TraceOutput | None = None  # the tracer's output at the latest frame (for videos)
        self.rng = np.random.default_rng(0)  # control-time prompt noise, re-seeded every episode
        self._states: deque[np.ndarray] = deque(maxlen=HISTORY_LENGTH)  # this episode's latest proprio states
        self._previous: deque[np.ndarray] = deque(maxlen=max(config.vla.previous_frames, 1))  # frames before this one
        self.embedder: Any = None  # texts -> {text: embedding} instead of the shared encoder (a served connection)

    @property
    def trace_config(self) -> TraceConfig | None:
        return getattr(self.config, "traces", None)

    @property
    def trace_space(self) -> str:
        """Where the traces handed to the model as points live: "3d" (camera frame, lifted with depth) or
        "2d" (pixels); "" when the model reads no trace points (every policy but tracetokens)."""
        return getattr(self.config, "trace_space", "")

    # --- the contract ------------------------------------------------------------------------------------
    @property
    def needs_depth(self) -> bool:
        """Whether the policy reads depth: for Ego3D, to draw the traces into (ST-VLA), or to lift the traces'
        points to 3D (trace tokens). TraceVLA without Ego3D reads RGB only, as in its paper, and so do trace
        tokens in 2D without Ego3D."""
        return self.config.vla.use_ego3d or (self.tracer is not None and self.depth_source == "traced") \
            or self.trace_space == "3d"

    @property
    def camera(self) -> CameraConfig:
        return getattr(self.config, "camera", None) or CameraConfig()

    @property
    def camera_features(self) -> list[str]:
        """The cameras read: RGB (with the depth and the traces), then the further ones."""
        return [F.camera_feature(i) for i in range(getattr(self.config.vla, "cameras", 1))]

    def input_features(self) -> dict[str, dict]:
        """The recorded features this policy reads, with the dtype and shape it needs (images at the model's
        square size: as the training reader gives them)."""
        vla = self.config.vla
        size = [vla.image_size, vla.image_size]
        wanted = {camera: {"dtype": "uint8", "shape": [*size, 3]} for camera in self.camera_features}
        if vla.use_state or self.uses_state_history:
            wanted[F.STATE] = {"dtype": "float32", "shape": [vla.state_dim]}
        if self.needs_depth:
            wanted[F.DEPTH] = {"dtype": "float32", "shape": size}
            wanted[F.INTRINSICS] = {"dtype": "float32", "shape": [3, 3]}
        return wanted

    def sent_features(self) -> dict[str, dict]:
        """`input_features` as a client sends them: each camera and the depth at the camera's own size."""
        sent = {}
        for feature, spec in self.input_features().items():
            size = self.camera.sizes.get(feature)
            sent[feature] = {**spec, "shape": [*size, *spec["shape"][2:]]} if size else spec
        return sent

    def camera_contract(self) -> dict[str, Any]:
        """The contract's "camera": the first camera's size as sent, the model's square side, how images are
        fitted to it, the intrinsics used when a client sends none, and the dataset's names of the inputs."""
        camera, side = self.camera, self.config.vla.image_size
        height, width = camera.sizes.get(F.RGB, [side, side])
        return {"height": height, "width": width, "image_size": side, "image_fit": camera.image_fit,
                "intrinsics": list(camera.intrinsics) or None, "features": dict(camera.features)}

    def contract(self) -> dict[str, Any]:
        """What a client must send and gets back: processor.json of a saved policy."""
        vla = self.config.vla
        return {
            "policy": self.policy_name,
            "input_features": self.sent_features(),
            # Each input feature <- the environment observation key it is read from.
            "observation_keys": {**{feature: F.observation_key(feature) for feature in self.input_features()},
                                 F.TASK: F.OBS_INSTRUCTION},
            "camera": self.camera_contract(),
            "output_features": {F.ACTION: {"dtype": "float32", "shape": [vla.action_dim]}},
            "chunk_size": vla.chunk_size,  # actions predicted per forward pass
            "n_action_steps": vla.n_action_steps,  # of which executed before the next forward pass
            "depth_source": self.depth_source,
            "traced_rgb": self.uses_traced_rgb,
            "state_history": HISTORY_LENGTH if self.uses_state_history else 0,
            "traces": config_key(self.trace_config) if self.trace_config is not None else None,
            **({"trace_tokens": self.trace_space} if self.trace_space else {}),
        }

    def check_features(self, features: dict[str, dict], where: str, expects: str) -> None:
        """A clear error when `features` (a dataset's, LeRobot entries) cannot feed this policy, or its
        actions are not the policy's. `expects` names the policy's origin ("checkpoint X expects")."""
        vla = self.config.vla
        wanted = self.input_features()
        if F.DEPTH in wanted and F.DEPTH not in features:
            why = "Ego3D" + (", and to lift its traces to 3D" if self.trace_space == "3d" else "")
            raise ValueError(f"{where} has no depth: policy {self.policy_name!r} needs it ({why}); record depth "
                             f"(a feature with info.is_depth_map) or train tracevla, which reads RGB only"
                             + (", or tracetokens with --trace_space 2d --model.use_ego3d false" if self.trace_space
                                else ""))
        if F.DEPTH in wanted and F.INTRINSICS not in features:
            raise ValueError(f"{where} has no {F.INTRINSICS}: policy {self.policy_name!r} needs the camera; give "
                             f"it with --intrinsics fx,fy,cx,cy or --fov DEGREES")
        for camera in self.camera_features:
            size = features[camera]["shape"][:2] if camera in features else None
            if size != wanted[camera]["shape"][:2]:
                raise ValueError(f"{where} has {camera} of size {size}; policy {self.policy_name!r} was built for "
                                 f"{len(self.camera_features)} camera(s) of {vla.image_size}x{vla.image_size} images")
        action_shape = features.get(F.ACTION, {}).get("shape")
        if action_shape != [vla.action_dim]:
            raise ValueError(f"{where} has actions of shape {action_shape}; {expects} [{vla.action_dim}]")
        state_shape = features.get(F.STATE, {}).get("shape")
        if state_shape is None and not (vla.use_state or self.uses_state_history):
            return  # images and actions only: a model without the state token reads none
        if state_shape is None and self.uses_state_history:
            raise ValueError(f"{where} has no {F.STATE}: policy {self.policy_name!r} reads the proprio state's "
                             f"history (its prompt)")
        if state_shape != [vla.state_dim]:  # read by the model or not, the state's statistics are fitted
            raise ValueError(f"{where} has {F.STATE} of shape {state_shape}; {expects} [{vla.state_dim}]")

    # --- per episode -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new episode: the tracker's buffer, the state history and the prompt noise start over."""
        self._states.clear()
        self._previous.clear()
        self.rng = np.random.default_rng(0)  # the same noise every episode: reloaded policies act the same
        self.last_trace = None
        if self.tracer is not None:
            self.tracer.reset()

    def snapshot(self) -> dict[str, Any]:
        """This episode's state (tracer, frame and state history, prompt noise, last trace) as it is now, for
        `restore`: a served step is a transaction, and a frame that fails anywhere leaves the episode as it was."""
        return {"tracer": None if self.tracer is None else self.tracer.episode_state(),
                "previous": copy.copy(self._previous), "states": copy.copy(self._states),
                "rng": self.rng.bit_generator.state, "last_trace": self.last_trace}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Put the episode back as `snapshot()` found it (the arrays in the histories are never changed in place;
        a snapshot is used up by its restore)."""
        if self.tracer is not None:
            self.tracer.restore_episode(snapshot["tracer"])
        self._previous, self._states, self.last_trace = snapshot["previous"], snapshot["states"], snapshot["last_trace"]
        self.rng.bit_generator.state = snapshot["rng"]

    def trace_inputs(self) -> list[str]:
        """What `trace_frame` reads: the RGB the tracker follows, and the depth the traces are drawn into
        (ST-VLA) or lifted with (trace tokens in 3D), with its camera."""
        return [F.RGB] + ([F.DEPTH, F.INTRINSICS] if self.reads_trace_depth else [])

    @property
    def reads_trace_depth(self) -> bool:
        """Whether the tracer gets the frame's depth: to draw the traces into (ST-VLA) or to lift them to 3D."""
        return self.depth_source == "traced" or self.trace_space == "3d"

    def trace_outputs(self) -> list[str]:
        """What `trace_frame` adds to a frame (what training caches per dataset and trace setting)."""
        return ([F.TRACED_DEPTH] if self.depth_source == "traced" else []) + [F.HAS_TRACES] + \
            ([F.TRACED_RGB] if self.uses_traced_rgb else []) + ([F.TRACE_POINTS] if self.trace_space else [])

    def trace_cache_name(self) -> str:
        """The name of the cache of `trace_frame`'s outputs: everything they depend on but the dataset."""
        return f"traced-{self.trace_config.cache_key()}" + ("-rgb" if self.uses_traced_rgb else "") \
            + (f"-points{self.trace_space}" if self.trace_space else "")

    def trace_frame(self, frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Step the tracer into one frame (`trace_inputs`): the traced depth (ST-VLA), whether traces were
        drawn, for TraceVLA the traced image (the plain one when there are none), and for trace tokens the
        traces' points."""
        rgb = frame[F.RGB]
        # The traces come from RGB alone; a policy that neither draws them into depth nor lifts them gives
        # the tracer a blank depth (in training and at control alike, whether or not it reads depth for Ego3D).
        depth = frame[F.DEPTH] if self.reads_trace_depth else np.zeros(np.shape(rgb)[:2], np.float32)
        step = self.tracer.step(rgb, depth, intrinsics=frame[F.INTRINSICS] if self.reads_trace_depth else None)
        self.last_trace = step
        traced = {F.HAS_TRACES: np.bool_(len(step.traces) > 0)}
        if self.depth_source == "traced":
            traced[F.TRACED_DEPTH] = step.traced_depth
        if self.uses_traced_rgb:
            traced[F.TRACED_RGB] = step.traced_rgb if step.traces else frame[F.RGB]
        if self.trace_space:
            traced[F.TRACE_POINTS] = trace_point_array(
                step.traces, len(step.state.positions), self.trace_config.buffer_length,
                self.trace_config.selection.num_traces, np.shape(rgb)[:2],
                lifted=step.traces_3d if self.trace_space == "3d" else None)
        return traced

    def untraced(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The same frame as the model would see it without traces (the counterfactual of a traced policy:
        raw depth in place of the traced, the plain image twice and the plain prompt)."""
        out = {**frame, F.HAS_TRACES: np.bool_(False)}
        if F.TRACED_DEPTH in frame:
            out[F.TRACED_DEPTH] = frame[F.DEPTH]
        if F.TRACED_RGB in frame:
            out[F.TRACED_RGB] = frame[F.RGB]
        if F.TRACE_POINTS in frame:
            out[F.TRACE_POINTS] = np.zeros_like(frame[F.TRACE_POINTS])
        return out

    def traced_share(self, frame: dict[str, Any]) -> float:
        """The share of the input's pixels the traces changed in this frame (depth for ST-VLA, the second
        image for TraceVLA), or of the trace tokens that hold a trace."""
        if F.TRACE_POINTS in frame:
            return float(np.mean(present_traces(frame[F.TRACE_POINTS])))
        if F.TRACED_DEPTH in frame:
            return float(np.mean(np.asarray(frame[F.TRACED_DEPTH]) != np.asarray(frame[F.DEPTH])))
        if F.TRACED_RGB in frame:
            return float(np.mean(np.any(np.asarray(frame[F.TRACED_RGB]) != np.asarray(frame[F.RGB]), axis=-1)))
        return 0.0

    def observation_frame(self, obs: dict[str, Any], checked: bool = False) -> dict[str, Any]:
        """One observation as a frame in dataset keys, with what the processor derives from the episode so
        far (call once per control step, after `reset()` at the episode start).

        `obs` is keyed as the environment's observations (`rgb`, `proprio`, `instruction`, ...) or, as a
        robot client's message may be, by the dataset features themselves (`observation.state`, `task`),
        or by the dataset's own names (`observation.images.front`). Images and depth come at the camera's
        own size (the contract's input_features) or at the model's square; intrinsics at the size of the
        images sent, or when none are sent, those the policy was trained with. A missing key, a shape other
        than those or an implausible value (`checked_observation`) is a ValueError naming it: nothing the
        policy cannot read turns into an action. `checked`: the values were checked already, and more
        strictly (the server's stvla.serve.checks), so they are not checked again on the hot path."""
        if not isinstance(obs, dict):
            raise ValueError(f"an observation must be a dict of arrays, got {type(obs).__name__}")
        frame: dict[str, Any] = {}
        sent = self.sent_features()
        for feature, spec in self.input_features().items():
            if feature == F.INTRINSICS:
                continue  # at the size the images came in: below
            value = _observed(obs, feature, F.observation_key(feature), self.camera.features.get(feature))
            shapes = [spec["shape"]] + ([sent[feature]["shape"]] if sent[feature] != spec else [])
            if list(np.shape(value)) not in shapes:
                raise ValueError(f"observation {feature!r} has shape {list(np.shape(value))}; policy "
                                 f"{self.policy_name!r} reads {' or '.join(map(str, shapes[::-1]))}")
            value = np.asarray(value)
            frame[feature] = self.fitted(feature, value if checked else checked_observation(feature, value))
        if F.INTRINSICS in sent:
            frame[F.INTRINSICS] = self.observed_intrinsics(obs, np.shape(_observed(
                obs, F.RGB, F.OBS_RGB, self.camera.features.get(F.RGB)))[:2])
        frame[F.TASK] = check_instruction(_observed(obs, F.TASK, F.OBS_INSTRUCTION),
                                          f"observation {F.OBS_INSTRUCTION!r}")
        if F.STATE in frame:
            self._states.append(np.asarray(frame[F.STATE], dtype=np.float64))
        if self.config.vla.previous_frames:
            frame[F.PREVIOUS_RGB] = self.previous_frames(frame[F.RGB])
        if self.tracer is not None:
            frame.update(self.trace_frame(frame))
        if self.uses_state_history:
            frame[F.STATE_HISTORY] = self.state_history()
        return frame

    def fitted(self, feature: str, value: np.ndarray) -> np.ndarray:
        """An image or depth map sent at the camera's size as the model's square input (as training read it)."""
        side = self.config.vla.image_size
        if feature == F.DEPTH:
            return fit_depth(value, side, self.camera.image_fit)
        return fit_rgb(value, side, self.camera.image_fit) if feature in self.camera_features else value

    def observed_intrinsics(self, obs: dict[str, Any], sent_hw: tuple[int, int]) -> np.ndarray:
        """The camera matrix of the model's square images: the one sent (for images of `sent_hw`), else the
        one given for training (at the camera's size), moved as the images were."""
        camera, side = self.camera, self.config.vla.image_size
        if camera.intrinsics and not any(key in obs for key in (F.OBS_INTRINSICS, F.INTRINSICS)):
            fx, fy, cx, cy = camera.intrinsics
            K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float32)
            sent_hw = tuple(camera.sizes.get(F.RGB, [side, side]))
        else:
            K = checked_observation(F.INTRINSICS, np.asarray(_observed(obs, F.INTRINSICS, F.OBS_INTRINSICS)))
            if list(K.shape) != [3, 3]:
                raise ValueError(f"observation {F.INTRINSICS!r} has shape {list(K.shape)}; policy "
                                 f"{self.policy_name!r} reads [3, 3]")
        if tuple(sent_hw) == (side, side):
            return K
        return fit_intrinsics(K, tuple(sent_hw), side, camera.image_fit).astype(np.float32)

    def previous_frames(self, rgb: np.ndarray) -> np.ndarray:
        """(k, H, W, 3): the k frames before this one, oldest first; before the episode's first frame, the
        first frame again (what training reads). Steps the buffer to this frame."""
        count = self.config.vla.previous_frames
        previous = list(self._previous) or [rgb]
        stacked = np.stack([previous[0]] * (count - len(previous)) + previous[-count:])
        self._previous.append(np.asarray(rgb))
        return stacked

    def state_history(self) -> np.ndarray:
        """(HISTORY_LENGTH, S): this episode's latest states, oldest first, zero rows before its start."""
        states = list(self._states)
        return np.concatenate([np.zeros((HISTORY_LENGTH - len(states), len(states[-1]))), np.stack(states)])

    # --- frames -> model inputs -----------------------------------------------------------------------------
    def model_inputs(self, frames: dict[str, Any], rng: np.random.Generator | None = None,
                     augment: bool = False) -> dict[str, Any]:
        """Frames (batch-major, dataset keys, `F.TASK` a list of instructions) -> the model's batch.

        `rng` draws what is random in the inputs (LLARVA's prompt noise); with `augment` (training), also
        TraceVLA's share of samples shown untraced.
        """
        # np.array copies: the frames may be read-only memory maps or the caller's observation arrays.
        def image(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(x, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)

        def floats(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(x, dtype=np.float32))

        count = len(frames[F.TASK])
        if self.tracer is not None and F.HAS_TRACES not in frames:
            raise ValueError(f"policy {self.policy_name!r} reads traces, but the frames have no {F.HAS_TRACES}: "
                             f"they come from observation_frame (control) or trace_frame (training)")
        shown = np.array(frames[F.HAS_TRACES], dtype=bool) if F.HAS_TRACES in frames else np.zeros(count, bool)
        if self.uses_traced_rgb and augment:
            shown &= rng.random(count) >= self.config.untraced_fraction
        batch = {camera: image(frames[camera]) for camera in self.camera_features}
        if self.config.vla.previous_frames:  # (B, k, H, W, 3) -> (B, 3k, H, W)
            stacked = image(np.asarray(frames[F.PREVIOUS_RGB]).reshape(-1, *np.shape(frames[F.RGB])[1:]))
            batch[F.PREVIOUS_RGB] = stacked.reshape(count, -1, *stacked.shape[-2:])
        if F.STATE in self.input_features():
            batch[F.STATE] = floats(frames[F.STATE])
        if F.DEPTH in self.input_features():
            batch[F.DEPTH] = floats(frames[F.TRACED_DEPTH] if self.depth_source == "traced" else frames[F.DEPTH])
            batch[F.INTRINSICS] = floats(frames[F.INTRINSICS])
        if self.trace_space:
            batch[F.TRACE_POINTS] = floats(frames[F.TRACE_POINTS])
        if self.uses_traced_rgb:
            # Samples without traces (or shown untraced) see [original, original].
            batch[F.TRACED_RGB] = image(np.where(shown[:, None, None, None], frames[F.TRACED_RGB], frames[F.RGB]))
        batch.update(self.language_inputs(frames, shown, rng))
        return batch

    def prompt(self, instruction: str, traced: bool) -> str:
        """The text the language encoder sees (TraceVLA changes it when traces are shown)."""
        return instruction

    def language_prompts(self, instruction: str) -> list[str]:
        """The texts `language_inputs` may embed for `instruction` (what a server embeds ahead, off its loop)."""
        return list(dict.fromkeys([self.prompt(instruction, False), self.prompt(instruction, True)]))

    def language_inputs(self, frames: dict[str, Any], shown: np.ndarray,
                        rng: np.random.Generator | None) -> dict[str, Any]:
        """The batch entries of the language input: here the cached sentence embedding of each prompt."""
        prompts = [self.prompt(text, bool(traced)) for text, traced in zip(frames[F.TASK], shown)]
        embeddings = (self.embedder or instruction_embeddings)(prompts)
        return {F.LANGUAGE: torch.from_numpy(np.stack([embeddings[p] for p in prompts]))}


def _observed(obs: dict[str, Any], feature: str, observation_key: str, dataset_key: str | None = None) -> Any:
    """`obs[observation_key]`, or `obs[feature]` for a message keyed by dataset features, or
    `obs[dataset_key]` keyed by the dataset's own name of it (`observation.images.front`)."""
    keys = [observation_key, feature] + ([dataset_key] if dataset_key else [])
    for key in keys:
        if key in obs:
            return obs[key]
    # The keys it has are counted, not repeated: an observation may come from outside (a served client).
    raise ValueError(f"the observation has no {' or '.join(map(repr, keys))} (it has {len(obs)} other keys)")


def checked_observation(feature: str, value: np.ndarray) -> np.ndarray:
    """`value` when it is what `feature` must hold, else a ValueError naming the feature and the value."""
    where = f"observation {feature!r}"
    if feature == F.RGB:
        if value.dtype != np.uint8:
            raise ValueError(f"{where} must be uint8 RGB (0-255), got {value.dtype}")
    elif feature == F.DEPTH:
        geometry.check_metric_depth(value, where)
    elif feature == F.INTRINSICS:
        geometry.check_intrinsics(value, where)
    elif value.dtype.kind not in "fiub" or not np.isfinite(value).all():
        bad = np.flatnonzero(~np.isfinite(value)) if value.dtype.kind == "f" else []
        raise ValueError(f"{where} must be finite numbers, got {value.dtype}"
                         + (f" with non-finite values at {bad[:5].tolist()}" if len(bad) else ""))
    return value


def batch_of_one(frame: dict[str, Any]) -> dict[str, Any]:
    """A single frame as a batch of one (the instruction as a list of one)."""
    return {key: [value] if key == F.TASK else np.asarray(value)[None] for key, value in frame.items()}


def checked_contract(path: Path, computed: dict[str, Any], required: bool) -> dict[str, Any]:
    """The contract clients are sent: the one computed from the policy's config, with the control rate
    training wrote into processor.json (the data's fps). The file must agree with the config on every field
    both hold (an older checkpoint may lack a field added since): a file changed after training would
    otherwise be served as if it were true, or ignored without a word. A checkpoint without the file loads
    (`required` False), but cannot be served: clients would not be told the control rate."""
    if not path.is_file():
        if not required:
            return dict(computed)
        raise ValueError(f"{path} is missing: a saved policy holds it (Policy.save_pretrained writes it, with the "
                         f"control rate clients are told)")
    try:
        written = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON ({' '.join(str(error).split())})") from None
    if not isinstance(written, dict):
        raise ValueError(f"{path} holds {type(written).__name__}, not the policy's contract (a JSON object)")
    expected = json.loads(json.dumps(computed))  # tuples as lists, as the file holds them
    for field, value in expected.items():
        if field in written and written[field] != value:
            where, said, given = first_difference(written[field], value, field)
            raise ValueError(f"{path}: {where!r} is {said}, but the policy's config.json gives {given}: the file "
                             f"was changed after training (save the policy again to rewrite it)")
    fps = written.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000
                            or fps != int(fps)):  # training writes the data's fps, a whole number as LeRobot's
        raise ValueError(f"{path}: 'fps' must be a control rate in (0, 1000] Hz, a whole number as the training "
                         f"data's fps, got {json.dumps(fps)[:40]}")
    return {**computed, **({"fps": fps} if fps else {})}


def first_difference(said: Any, given: Any, where: str) -> tuple[str, str, str]:
    """The dotted path of the first place JSON values `said` and `given` differ, and both values there (a
    missing entry shown as "nothing")."""
    if isinstance(said, dict) and isinstance(given, dict):
        for key in [*given, *(key for key in said if key not in given)]:
            if said.get(key, ...) != given.get(key, ...):
                if key not in said or key not in given:
                    return (f"{where}.{key}", json.dumps(said[key])[:60] if key in said else "nothing",
                            json.dumps(given[key])[:60] if key in given else "nothing")
                return first_difference(said[key], given[key], f"{where}.{key}")
    return where, json.dumps(said)[:60], json.dumps(given)[:60]
