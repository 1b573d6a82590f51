"""What every policy is: a registered name, a dataclass config, an input processor, LeRobot's training
and control calls, and safetensors checkpoints that reload exactly.

    loss, logs = policy.forward(batch)                   # training
    policy.reset(); action = policy.select_action(obs)   # closed-loop control, one env step each
    policy.save_pretrained(path); same = load_policy(path)

Observations reach the model only through `policy.processor` (stvla.policies.processor), in training
and in control alike.
"""

from __future__ import annotations

import contextlib
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

from stvla import features as F
from stvla.config import KEY_NEUTRAL, config_from_dict, config_key
from stvla.devices import batch_to
from stvla.policies.normalizer import FittedNormalizer
from stvla.policies.processor import CONTRACT_FILE, CameraConfig, InputProcessor, batch_of_one, checked_contract
from stvla.policies.vla import SmallVLA, VLAConfig
from stvla.traces import TraceConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_DIR = "backbone"  # a checkpoint's copy of its PaliGemma backbone's config.json (the weights are in WEIGHTS_FILE)


@dataclass
class PolicyConfig:
    vla: VLAConfig = field(default_factory=VLAConfig)  # the shared small VLA model
    temporal_ensemble: float = field(default=0.0, metadata=KEY_NEUTRAL)  # ACT's m: a chunk every step, overlaps averaged (0 = off)
    camera: CameraConfig = field(default_factory=CameraConfig, metadata=KEY_NEUTRAL)  # the cameras as trained and sent: sizes, image fit, given intrinsics, the dataset's names (set by the trainer)


@dataclass
class TracedPolicyConfig(PolicyConfig):
    traces: TraceConfig = field(default_factory=TraceConfig)  # online tracker, selection and drawing


class Policy(nn.Module):
    """Base of the registered policies; subclasses set `name`, `config_class` and `processor_class`."""

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    processor_class: ClassVar[type[InputProcessor]] = InputProcessor

    def __init__(self, config: PolicyConfig | None = None, backbone_weights: bool = True):
        """`backbone_weights=False`: a PaliGemma backbone's architecture only (see `SmallVLA`)."""
        super().__init__()
        config = config or self.config_class()
        # A copy: the caller's config is not changed by the backbone's shape.
        self.config = dataclasses.replace(config, vla=config.vla.with_backbone_shape())
        self.model = SmallVLA(self.config.vla, backbone_weights)
        self.processor = self.processor_class(self.config, self.name)
        self.predicted_trace: np.ndarray | None = None  # LLARVA: the latest predicted future path, (P, 2) px
        self.remove_traces = False  # act on the untraced inputs (the test-time ablation of a traced policy)
        self.trace_diagnostics: TraceDiagnostics | None = None  # when set, what the traces did this episode
        self._queue: deque[np.ndarray] = deque()  # the current chunk's actions still to execute
        self._chunks: deque[np.ndarray] = deque(maxlen=self.config.vla.chunk_size)  # temporal ensembling

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fit_statistics(self, actions: np.ndarray, states: np.ndarray | None) -> None:
        """Fit the action normaliser, the action tokenizer (the adaptive grid or per-dimension bins) and the state
        normaliser on training data (`states` None: a dataset without states, a model without the state token)."""
        # Copies: the inputs may be read-only memory maps of the training cache.
        actions_t = torch.from_numpy(np.array(actions, dtype=np.float32))
        self.model.action_normalizer.fit_(actions_t)
        self.model.tokenizer.fit(self.model.action_normalizer.normalize(actions_t))
        if states is not None:
            self.model.state_normalizer.fit_(torch.from_numpy(np.array(states, dtype=np.float32)))

    # --- LeRobot-style calls ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(batch)

    def reset(self) -> None:
        """Start a new episode: empty the action queue and start the processor's episode state over."""
        self._queue.clear()
        self._chunks.clear()
        self.predicted_trace = None
        self.processor.reset()
        if self.trace_diagnostics is not None:
            self.trace_diagnostics = TraceDiagnostics()

    @torch.no_grad()
    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """One action for the env observation `obs` (see stvla.envs); the tracker steps every call.

        A LLARVA policy also predicts the end effector's future path with every action chunk: it is in
        `policy.predicted_trace` ((P, 2) pixels) after the call.
        """
        frame = self.processor.observation_frame(obs)
        if self.processor.tracer is not None:
            if self.trace_diagnostics is not None:
                self.trace_diagnostics.steps += 1
                if frame[F.HAS_TRACES]:
                    self.trace_diagnostics.steps_with_traces += 1
                    self.trace_diagnostics.traced_pixels += self.processor.traced_share(frame)
            if self.remove_traces:
                frame = self.processor.untraced(frame)
        if self.config.temporal_ensemble > 0:
            # Every step a new chunk; the chunk predicted i steps ago holds its action for now at index i.
            self._chunks.append(self._acting_chunk(frame))
            actions = np.stack([chunk[len(self._chunks) - 1 - age] for age, chunk in enumerate(self._chunks)])
            weights = np.exp(-self.config.temporal_ensemble * np.arange(len(actions)))  # the oldest weighs most
            return ((weights[:, None] * actions).sum(0) / weights.sum()).astype(actions.dtype)
        if not self._queue:
            self._queue.extend(self._acting_chunk(frame)[: self.config.vla.n_action_steps])
        return self._queue.popleft()

    def _acting_chunk(self, frame: dict[str, Any]) -> np.ndarray:
        """The chunk to act on; measuring the traces, also how far it and the image tokens the traces reach
        move without them (same weights)."""
        traced = self._model_batch(frame)
        chunk = self._chunk(traced)
        if self.trace_diagnostics is not None and self.processor.tracer is not None and frame[F.HAS_TRACES]:
            untraced = self._model_batch(self.processor.untraced(frame))
            without = self._chunk(untraced, keep_trace=False)
            self.trace_diagnostics.sensitivities.append(float(np.linalg.norm(chunk - without, axis=-1).mean()))
            self.trace_diagnostics.action_norms.append(float(np.linalg.norm(chunk, axis=-1).mean()))
            with torch.no_grad(), self._evaluating():
                tokens, tokens_without = (self.model.trace_reachable_tokens(batch) for batch in (traced, untraced))
            change = torch.linalg.vector_norm(tokens - tokens_without) / torch.linalg.vector_norm(tokens)
            self.trace_diagnostics.token_changes.append(float(change))
        return chunk

    def _predict_chunk(self, frame: dict[str, Any], processor: InputProcessor | None = None) -> np.ndarray:
        """(chunk_size, action_dim) actions for one frame (and LLARVA's predicted path, kept). `processor`:
        whose episode state made the frame (a served connection's own; the policy's by default)."""
        return self._chunk(self._model_batch(frame, processor))

    def _model_batch(self, frame: dict[str, Any], processor: InputProcessor | None = None) -> dict[str, torch.Tensor]:
        """One frame's model inputs, a batch of one on the policy's device."""
        processor = processor or self.processor
        return batch_to(processor.model_inputs(batch_of_one(frame), rng=processor.rng), self.device)

    def _chunk(self, batch: dict[str, torch.Tensor], keep_trace: bool = True) -> np.ndarray:
        """The decoded action chunk of a batch of one; LLARVA's predicted path is kept (`keep_trace`)."""
        with self._evaluating():
            chunk, trace = self.model.predict_chunk(batch)
        if trace is not None and keep_trace:
            self.predicted_trace = trace[0].cpu().numpy()
        return chunk[0].cpu().numpy()

    @contextlib.contextmanager
    def _evaluating(self):
        """Eval mode (no dropout) for the forwards inside, the previous mode restored after."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # --- checkpoints -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, fps: int | None = None) -> Path:
        """Write config.json (type + config), model.safetensors (weights, normalisers, action grid) and
        processor.json (the input contract, for clients: written from the config, so a checkpoint without
        it, or from an older version, loads the same; `fps`, the control rate of the training data, is added
        to it; one that disagrees with the config is refused at load, and `stvla serve` needs it).

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
        contract = {**self.processor.contract(), **({"fps": int(fps)} if fps else {})}
        (directory / CONTRACT_FILE).write_text(json.dumps(contract, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Policy":
        """Reload a checkpoint of this policy type exactly (use `load_policy` for any type)."""
        policy_type, config = read_checkpoint_config(directory)
        if policy_type != cls.name:
            raise ValueError(f"{directory} holds a {policy_type!r} policy, not {cls.name!r}")
        # Every weight is in the checkpoint: a PaliGemma backbone's original weights need not be read too.
        where = str(Path(directory) / CONFIG_FILE)
        try:
            policy = cls(config_from_dict(cls.config_class, config, where), backbone_weights=False)
        except ValueError as error:  # a value the config refuses: said of the file that holds it
            raise ValueError(str(error) if where in str(error) else f"{where}: {error}") from None
        policy.load_weights(directory, strict=True)
        checked_contract(Path(directory) / CONTRACT_FILE, policy.processor.contract(), required=False)
        return policy

    def load_weights(self, directory: str | Path, strict: bool = False, leave_out: tuple[str, ...] = ()) -> list[str]:
        """Load the model weights of a checkpoint (e.g. a SpatialVLA base into an ST-VLA policy).

        Shapes must match; with strict=False, parameters that only this policy has (TraceVLA's
        separator) keep their initial values. Returns the names of those parameters. Checkpoint weights
        whose names start with one of `leave_out` (an input this policy does without) are not read.
        """
        path = checkpoint_file(directory, WEIGHTS_FILE)
        state = {name: value for name, value in read_weights(path).items() if not name.startswith(leave_out)}
        own = self.model.state_dict()
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if mismatched:
            raise ValueError(f"{path}: shapes differ from this policy's for {mismatched[:5]} "
                             f"(checkpoint {[tuple(state[k].shape) for k in mismatched[:5]]}, "
                             f"policy {[tuple(own[k].shape) for k in mismatched[:5]]})")
        # Another float precision is a cast; integers or booleans where the policy holds floats (or the
        # reverse) are not the weights it was saved with, and a silent cast would act on them.
        retyped = [k for k, v in state.items() if k in own and v.dtype != own[k].dtype
                   and not (v.is_floating_point() and own[k].is_floating_point())]
        if retyped:
            raise ValueError(f"{path}: tensor {retyped[0]!r} is stored as {state[retyped[0]].dtype}, the policy holds "
                             f"{own[retyped[0]].dtype}" + (f" ({len(retyped)} such tensors)" if len(retyped) > 1 else ""))
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise ValueError(f"{path}: weights this policy does not have: {unexpected[:5]}")
        missing = sorted(set(own) - set(state))
        if strict and missing:
            raise ValueError(f"{path}: weights missing from the checkpoint: {missing[:5]}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        self.model.load_state_dict(state, strict=False)
        for name, module in self.model.named_modules():  # normalisers read from the file map every action
            if isinstance(module, FittedNormalizer) and f"{name}.fitted" in state:
                module.check_loaded(f"{path}: {name}")
        return missing

    def check_can_act(self, where: str) -> None:
        """Refuse, in one line naming `where`, a policy that cannot act: one saved before training, whose
        normalisers were never fitted (a policy without a state token never fits its state's)."""
        unused = () if self.config.vla.use_state else ("state_normalizer",)
        for name, module in self.model.named_modules():
            if isinstance(module, FittedNormalizer) and name not in unused and not bool(module.fitted):
                raise ValueError(f"{where}: its {name} was never fitted (a policy saved before training): it cannot act")


@dataclass
class TraceDiagnostics:
    """What a traced policy's traces did over one episode (`stvla eval`): on how many steps there were
    traces, how much of the input they changed, how much of the tokens they reach (the relative change of
    the tokens traces can enter: ST-VLA's image tokens through Ego3D, TraceVLA's second image, the trace
    tokens), and how far the decoded action chunk moves when they are removed (the counterfactual forward,
    same weights, at every chunk predicted with traces)."""

    steps: int = 0  # control steps
    steps_with_traces: int = 0  # of which the tracer drew traces
    traced_pixels: float = 0.0  # sum over those steps of the share of input pixels the traces changed
    sensitivities: list[float] = field(default_factory=list)  # per chunk with traces: mean L2 of its actions' change
    action_norms: list[float] = field(default_factory=list)  # per chunk with traces: mean L2 of its actions (the scale)
    token_changes: list[float] = field(default_factory=list)  # per chunk with traces: |tokens - untraced tokens| / |tokens|

    def summary(self) -> dict[str, float | None]:
        with_traces = self.steps_with_traces
        return {"trace_step_share": with_traces / self.steps if self.steps else None,
                "traced_pixel_share": self.traced_pixels / with_traces if with_traces else None,
                "trace_sensitivity": float(np.mean(self.sensitivities)) if self.sensitivities else None,
                "action_norm": float(np.mean(self.action_norms)) if self.action_norms else None,
                "trace_token_change": float(np.mean(self.token_changes)) if self.token_changes else None}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, refused with one line naming the file if it is not one (truncated,
    a pickle under the name) or holds a non-finite value."""
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types (and OSError, ValueError) for bad files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: not a readable safetensors file ({reason})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{path}: tensor {name!r} holds {count} non-finite value(s) (NaN or inf): refusing to act on it")
    return state


def checkpoint_file(directory: str | Path, name: str) -> Path:
    """The path of a checkpoint's file `name`, refused in one line if it is missing or not a regular file."""
    path = Path(directory) / name
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    kind = "a directory" if path.is_dir() else "a device, pipe or socket"
    raise ValueError(f"checkpoint file {path} is {kind}, not a file")


def checkpoint_fingerprint(directory: str | Path) -> str:
    """A short hash of a checkpoint's weights and config: what it is, wherever it lies (caches key on it)."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update(checkpoint_file(directory, name).read_bytes())
    return digest.hexdigest()[:16]


def read_checkpoint_config(directory: str | Path) -> tuple[str, dict]:
    """(policy type, config dict) of a checkpoint; a backbone path inside it is made absolute."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        if path.is_symlink():  # there, but leading nowhere (a loop, or a file since removed)
            raise ValueError(f"{path} is a symbolic link that leads to no file: point it at the config, or remove it")
        raise FileNotFoundError(f"not a policy checkpoint: {path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'type' and 'config'")
    for key in ("type", "config"):
        if key not in data:
            raise ValueError(f"{path}: field {key!r} is missing")
    if not isinstance(data["type"], str) or not isinstance(data["config"], dict) or \
            not isinstance(data["config"].get("vla", {}), dict):
        raise ValueError(f"{path}: 'type' must be a policy name and 'config' (and its 'vla') a JSON object")
    backbone = data["config"].get("vla", {}).get("backbone", {})
    if not isinstance(backbone, dict):
        raise ValueError(f"{path}: 'config.vla.backbone' must be a JSON object")
    if backbone.get("path") == BACKBONE_DIR:
        backbone["path"] = str(Path(directory).resolve() / BACKBONE_DIR)
    return data["type"], data["config"]
