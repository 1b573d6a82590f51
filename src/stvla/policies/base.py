"""What every policy is: a registered name, a dataclass config, LeRobot's training and control calls,
and safetensors checkpoints that reload exactly.

    loss, logs = policy.forward(batch)     # training
    policy.reset(); action = policy.select_action(obs)   # closed-loop control, one env step each
    policy.save_pretrained(path); same = load_policy(path)

`model_inputs` is the single place where numpy frames become model tensors, used by the training
data pipeline and by `select_action` alike, so that control sees exactly what training saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stvla.config import config_from_dict, config_key
from stvla.policies.prompt import HISTORY_LENGTH
from stvla.policies.text import instruction_embeddings
from stvla.policies.vla import SmallVLA, VLAConfig
from stvla.traces import OnlineTracer, TraceConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_DIR = "backbone"  # a checkpoint's copy of its PaliGemma backbone's config.json (the weights are in WEIGHTS_FILE)


@dataclass
class PolicyConfig:
    vla: VLAConfig = field(default_factory=VLAConfig)  # the shared small VLA model


@dataclass
class TracedPolicyConfig(PolicyConfig):
    traces: TraceConfig = field(default_factory=TraceConfig)  # online tracker, selection and drawing


def torch_device(name: str) -> torch.device:
    """The torch device called `name` ("cpu", "cuda", "cuda:1", "mps"), or a clear error if absent here."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from error
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": hasattr(torch.backends, "mps") and torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ValueError(f"device {name!r} is not available on this machine (torch {torch.__version__})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on `device` (other entries, such as prompt strings, unchanged)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Policy(nn.Module):
    """Base of the registered policies; subclasses set `name`, `config_class` and the input choices."""

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    depth_source: ClassVar[str] = "raw"  # which depth feeds Ego3D: "raw" or "traced"
    uses_traced_rgb: ClassVar[bool] = False  # TraceVLA's second, traced image
    uses_state_history: ClassVar[bool] = False  # LLARVA's prompt: the last HISTORY_LENGTH proprio states

    def __init__(self, config: PolicyConfig | None = None, backbone_weights: bool = True):
        """`backbone_weights=False`: a PaliGemma backbone's architecture only (see `SmallVLA`)."""
        super().__init__()
        config = config or self.config_class()
        # A copy: the caller's config is not changed by the backbone's shape.
        self.config = dataclasses.replace(config, vla=config.vla.with_backbone_shape())
        self.model = SmallVLA(self.config.vla, backbone_weights)
        self.tracer = OnlineTracer(self.trace_config) if self.trace_config is not None else None
        self.last_trace = None  # the tracer's output of the latest control step (for videos)
        self.predicted_trace: np.ndarray | None = None  # LLARVA: the latest predicted future path, (P, 2) px
        self._queue: deque[np.ndarray] = deque()
        self._states: deque[np.ndarray] = deque(maxlen=HISTORY_LENGTH)  # this episode's latest proprio states
        self._rng = np.random.default_rng(0)  # test-time prompt noise, re-seeded every episode

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- what the policy consumes --------------------------------------------------------------------
    @property
    def trace_config(self) -> TraceConfig | None:
        return getattr(self.config, "traces", None)

    def prompt(self, instruction: str, traced: bool) -> str:
        """The text the language encoder sees (TraceVLA changes it when traces are shown)."""
        return instruction

    def language_inputs(self, frames: dict[str, np.ndarray], instructions: list[str], traced: np.ndarray,
                        rng: np.random.Generator | None) -> dict[str, Any]:
        """The batch entries of the language input: here the cached sentence embedding of each prompt."""
        prompts = [self.prompt(text, bool(shown)) for text, shown in zip(instructions, traced)]
        embeddings = instruction_embeddings(prompts)
        return {"observation.language": torch.from_numpy(np.stack([embeddings[p] for p in prompts]))}

    def fit_statistics(self, actions: np.ndarray, states: np.ndarray) -> None:
        """Fit the action normaliser, the adaptive action grid and the state normaliser on training data."""
        # Copies: the inputs may be read-only memory maps of the training cache.
        actions_t = torch.from_numpy(np.array(actions, dtype=np.float32))
        self.model.action_normalizer.fit_(actions_t)
        self.model.tokenizer.fit(self.model.action_normalizer.normalize(actions_t))
        self.model.state_normalizer.fit_(torch.from_numpy(np.array(states, dtype=np.float32)))

    def model_inputs(self, frames: dict[str, np.ndarray], instructions: list[str], traced: np.ndarray,
                     rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Numpy frames (batch-major) -> model inputs.

        `frames` holds "rgb" (B, H, W, 3) uint8, "depth" (B, H, W) (raw or traced, per `depth_source`),
        "intrinsics" (B, 3, 3), "state" (B, S), for TraceVLA "rgb_traced" (B, H, W, 3) uint8 and for
        LLARVA "state_history" (B, HISTORY_LENGTH, S). `traced` (B,) says which samples show traces;
        `rng` draws whatever is random in the inputs (LLARVA's prompt noise).
        """
        # np.array copies: the frames may be read-only memory maps or the caller's observation arrays.
        def image(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(x, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)

        batch = {
            "observation.images.rgb": image(frames["rgb"]),
            "observation.depth": torch.from_numpy(np.array(frames["depth"], dtype=np.float32)),
            "observation.camera.intrinsics": torch.from_numpy(np.array(frames["intrinsics"], dtype=np.float32)),
            "observation.state": torch.from_numpy(np.array(frames["state"], dtype=np.float32)),
            **self.language_inputs(frames, instructions, traced, rng),
        }
        if self.uses_traced_rgb:
            batch["observation.images.rgb_traced"] = image(frames["rgb_traced"])
        return batch

    # --- LeRobot-style calls ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(batch)

    def reset(self) -> None:
        """Start a new episode: empty the action queue, the state history and the tracker's buffer."""
        self._queue.clear()
        self._states.clear()
        self._rng = np.random.default_rng(0)  # the same noise every episode: reloaded policies act the same
        self.last_trace = None
        self.predicted_trace = None
        if self.tracer is not None:
            self.tracer.reset()

    def state_history(self) -> np.ndarray:
        """(HISTORY_LENGTH, S): this episode's latest states, oldest first, zero rows before its start."""
        states = list(self._states)
        return np.concatenate([np.zeros((HISTORY_LENGTH - len(states), len(states[-1]))), np.stack(states)])

    @torch.no_grad()
    def select_action(self, obs: dict[str, Any], return_trace: bool = False):
        """One action for the env observation `obs` (see stvla.envs); the tracker steps every call.

        With `return_trace`, returns (action, predicted future trace (P, 2) px or None) instead: LLARVA
        predicts the end effector's future path with every action chunk.
        """
        self._states.append(np.asarray(obs["proprio"], dtype=np.float64))
        traced_depth, traced_rgb, has_traces = obs["depth"], obs["rgb"], False
        if self.tracer is not None:
            self.last_trace = self.tracer.step(obs["rgb"], obs["depth"], intrinsics=obs["camera.intrinsics"])
            has_traces = len(self.last_trace.traces) > 0
            traced_depth = self.last_trace.traced_depth
            if self.uses_traced_rgb and has_traces:
                traced_rgb = self.last_trace.traced_rgb
        if not self._queue:
            frames = {
                "rgb": obs["rgb"][None],
                "depth": (traced_depth if self.depth_source == "traced" else obs["depth"])[None],
                "intrinsics": obs["camera.intrinsics"][None],
                "state": obs["proprio"][None],
                "rgb_traced": traced_rgb[None],
                "state_history": self.state_history()[None],
            }
            was_training = self.training
            self.eval()
            inputs = self.model_inputs(frames, [obs["instruction"]], np.array([has_traces]), self._rng)
            chunk, trace = self.model.predict_chunk(batch_to(inputs, self.device))
            self.train(was_training)
            self._queue.extend(chunk[0, : self.config.vla.n_action_steps].cpu().numpy())
            if trace is not None:
                self.predicted_trace = trace[0].cpu().numpy()
        action = self._queue.popleft()
        return (action, self.predicted_trace) if return_trace else action

    # --- checkpoints -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json (type + config) and model.safetensors (weights, normalisers, action grid).

        The checkpoint is self-contained: with a PaliGemma backbone, its architecture (config.json) is
        copied to `backbone/` beside every weight, and the saved config points there."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        # config_key: settings added later that hold their defaults are left out, so a default policy's
        # config.json (and with it its fingerprint, which caches key on) stays what it always was.
        config = config_key(self.config)
        backbone = self.config.vla.backbone
        if backbone.kind == "paligemma":
            (directory / BACKBONE_DIR).mkdir(exist_ok=True)
            source = Path(backbone.path) / "config.json"
            if source.resolve() != (directory / BACKBONE_DIR / "config.json").resolve():
                shutil.copyfile(source, directory / BACKBONE_DIR / "config.json")
            config["vla"]["backbone"]["path"] = BACKBONE_DIR
        (directory / CONFIG_FILE).write_text(json.dumps({"type": self.name, "config": config}, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Policy":
        """Reload a checkpoint of this policy type exactly (use `load_policy` for any type)."""
        policy_type, config = read_checkpoint_config(directory)
        if policy_type != cls.name:
            raise ValueError(f"{directory} holds a {policy_type!r} policy, not {cls.name!r}")
        # Every weight is in the checkpoint: a PaliGemma backbone's original weights need not be read too.
        policy = cls(config_from_dict(cls.config_class, config, str(Path(directory) / CONFIG_FILE)),
                     backbone_weights=False)
        policy.load_weights(directory, strict=True)
        return policy

    def load_weights(self, directory: str | Path, strict: bool = False) -> list[str]:
        """Load the model weights of a checkpoint (e.g. a SpatialVLA base into an ST-VLA policy).

        Shapes must match; with strict=False, parameters that only this policy has (TraceVLA's
        separator) keep their initial values. Returns the names of those parameters.
        """
        path = Path(directory) / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint weights missing: {path}")
        state = load_file(str(path))
        own = self.model.state_dict()
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if mismatched:
            raise ValueError(f"{path}: shapes differ from this policy's for {mismatched[:5]} "
                             f"(checkpoint {[tuple(state[k].shape) for k in mismatched[:5]]}, "
                             f"policy {[tuple(own[k].shape) for k in mismatched[:5]]})")
        result = self.model.load_state_dict(state, strict=strict)
        if result.unexpected_keys:
            raise ValueError(f"{path}: weights this policy does not have: {result.unexpected_keys[:5]}")
        return list(result.missing_keys)


def checkpoint_fingerprint(directory: str | Path) -> str:
    """A short hash of a checkpoint's weights and config: what it is, wherever it lies (caches key on it)."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = Path(directory) / name
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {path}")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def read_checkpoint_config(directory: str | Path) -> tuple[str, dict]:
    """(policy type, config dict) of a checkpoint; a backbone path inside it is made absolute."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a policy checkpoint: {path} is missing")
    data = json.loads(path.read_text())
    for key in ("type", "config"):
        if key not in data:
            raise ValueError(f"{path}: field {key!r} is missing")
    backbone = data["config"].get("vla", {}).get("backbone", {})
    if backbone.get("path") == BACKBONE_DIR:
        backbone["path"] = str(Path(directory).resolve() / BACKBONE_DIR)
    return data["type"], data["config"]
