"""Training, read top to bottom: stage 1 trains every weight; stage 2 (`--init CKPT`) adds LoRA adapters
to every linear layer of the trunk and trains only them.

Outputs in `out/`:
    train_config.json           this run's TrainConfig
    checkpoint/                 the latest training state (model, optimiser, schedule, step); resumable
    policy/                     the final policy (LoRA merged): config.json + model.safetensors + processor.json

A run killed at any point restarts from `checkpoint/` when called again with the same `out`, and
reaches the same weights as an uninterrupted run: the data order is a function of (seed, step).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from tqdm import tqdm

from stvla import features as F
from stvla.config import KEY_NEUTRAL, config_from_dict, config_key, config_to_dict, key_neutral_at, save_config
from stvla.data.cache import check_decoded
from stvla.data.roles import DataConfig
from stvla.data.store import EpisodeStore
from stvla.devices import batch_to
from stvla.locks import writes_to_out
from stvla.policies.action_layout import LAYOUTS, action_layout_for, action_names, control_mode, says_joint
from stvla.policies.base import Policy, read_checkpoint_config, read_weights
from stvla.policies.processor import CameraConfig
from stvla.policies.registry import make_policy, policy_class
from stvla.policies.text import check_instruction
from stvla.policies.vla import VLAConfig
from stvla.pretrained import first_line
from stvla.traces import TraceConfig
from stvla.traces.points import SPACES
from stvla.train.augment import AugmentConfig
from stvla.train import distributed
from stvla.train.ema import WeightAverage
from stvla.train.monitor import LogConfig, RunLog
from stvla.train.samples import TrainingSamples
from stvla.train.validation import (
    MIN_TRAINING,
    RunRecord,
    closed_loop_success,
    episodes_by_task,
    held_out_episodes,
    simulator_tasks,
    validation_frames,
    validation_loss,
)


@dataclass
class LoraSettings:
    rank: int = 32  # LoRA rank in stage 2 (with --init); 0 fine-tunes every weight instead
    alpha: float = 32.0  # LoRA scale numerator (the update is scaled by alpha / rank)
    dropout: float = 0.0  # dropout on the LoRA input

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"--lora.rank must be >= 0 (0 = every weight fine-tuned), got {self.rank}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"--lora.alpha must be a positive number, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    policy: str = "st"  # policy type: spatialvla, tracevla, st, tracetokens or llarva
    dataset: str = ""  # dataset directory (LeRobot v3 layout: from `stvla collect`, LeRobot, or the Hub)
    data: DataConfig = field(default_factory=DataConfig, metadata=KEY_NEUTRAL)  # which features are the camera and depth, the intrinsics if none are recorded, the cache folder
    out: str = "runs/train"  # output directory (resumes if it holds a checkpoint)
    init: str = ""  # stage 2: a policy checkpoint to start from (its normalisers and action grid are kept)
    lora: LoraSettings = field(default_factory=LoraSettings)  # stage-2 adapters
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata=KEY_NEUTRAL)  # training-time augmentation (random shift)
    ema: float = field(default=0.0, metadata=KEY_NEUTRAL)  # decay of a weight average exported instead of the last weights (0 = off)
    fsdp: bool = field(default=False, metadata=KEY_NEUTRAL)  # under torchrun: shard weights, gradients and optimiser state over the processes (FSDP2) instead of replicating them (DDP), for a backbone too large for one GPU
    model: VLAConfig = field(default_factory=VLAConfig)  # stage 1: the model's shape (image size from the dataset, the rest of the policy type's own fields from the type; stage 2 keeps the checkpoint's)
    traces: TraceConfig = field(default_factory=TraceConfig)  # traced policies (st, tracevla, tracetokens): tracker, buffer b, selection, drawing variant
    trace_points: int = -1  # llarva: future trace points predicted; -1 = the policy's 16 (or the checkpoint's), 0 = none
    trace_space: str = field(default="", metadata=KEY_NEUTRAL)  # tracetokens: the traces' points in "3d" (camera frame, lifted with depth) or "2d" (pixels: a camera without depth, with --model.use_ego3d false); "" = the --init checkpoint's, else 3d
    action_layout: str = field(default="", metadata=KEY_NEUTRAL)  # how actions become tokens: "ee", SpatialVLA's grid over an end effector's x y z (roll pitch yaw) gripper; "joint", per-dimension bins (any action); "" = from the action's names (stage 2: the --init checkpoint's)
    steps: int = 2000  # optimiser steps
    batch_size: int = 32  # samples per step
    lr: float = 0.0  # peak learning rate; 0 picks 3e-4 for full training, 1e-3 for LoRA
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up before the cosine decay
    seed: int = 0  # seeds the weights' initialisation and the data order
    save_every: int = 250  # steps between training checkpoints
    threads: int = 2  # torch CPU threads
    device: str = field(default="cpu", metadata=KEY_NEUTRAL)  # torch device to train on: cpu, cuda, cuda:1, mps
    save_every_minutes: float = field(default=5.0, metadata=KEY_NEUTRAL)  # also checkpoint when this much time passed since the last one (0 = steps only)
    val_episodes: int = field(default=1, metadata=key_neutral_at(0))  # episodes per task held out for validation, each task's last (0 = none; a task keeps 4 to train on)
    val_every: int = field(default=250, metadata=KEY_NEUTRAL)  # steps between validation losses (the best checkpoint is kept in <out>/best)
    eval_every: int = field(default=0, metadata=KEY_NEUTRAL)  # steps between closed-loop evaluations in the simulator, as stvla eval runs them (0 = none); the best by success is then kept
    eval_episodes: int = field(default=5, metadata=KEY_NEUTRAL)  # episodes per task in each of those evaluations
    log: LogConfig = field(default_factory=LogConfig, metadata=KEY_NEUTRAL)  # what the run records: train_log.jsonl, TensorBoard, W&B, loss.png

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every", "threads", "val_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "warmup_steps", "save_every_minutes", "val_episodes", "eval_every"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"--{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.threads > 1024:  # beyond any machine's cores: torch would try to allocate for them all
            raise ValueError(f"--threads must be at most 1024 (the CPU threads torch uses), got {self.threads}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be a whole number in [0, 2**32), got {self.seed}")
        if self.lora != LoraSettings() and not self.init:  # LoRA adapts a pre-trained model: stage 2 only
            raise ValueError("--lora.* settings apply when fine-tuning a pre-trained policy (stage 2): give --init "
                             "CHECKPOINT, or leave them out to train every weight from scratch")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be in [0, 1), got {self.ema}")
        if self.trace_points < -1:
            raise ValueError(f"--trace_points must be >= 0 (or -1: the policy's own), got {self.trace_points}")
        if self.action_layout not in ("", *LAYOUTS):
            raise ValueError(f"--action_layout must be one of {', '.join(LAYOUTS)} (or '': from the action's names), "
                             f"got {self.action_layout!r}")
        if self.trace_space not in ("", *SPACES):
            raise ValueError(f"--trace_space must be one of {', '.join(SPACES)} (or '': the checkpoint's), "
                             f"got {self.trace_space!r}")
        if self.dataset:  # a run or a cache written into the dataset would become part of what it reads
            for option, folder in (("--out", self.out), ("--cache_dir", self.data.cache_dir)):
                if folder and Path(folder).resolve().is_relative_to(Path(self.dataset).resolve()):
                    raise ValueError(f"{option} {folder} is inside the dataset {self.dataset}: write it elsewhere")

    def key(self) -> dict[str, Any]:
        """What the run's weights depend on, as cache keys spell it (stvla.benchmark): `config_key`, with
        the trace settings as the flat `variant` and `buffer` they were before `traces` was nested (whole
        only where another trace setting differs from its default), so every cell kept before keeps its key."""
        key = config_key(self)
        key.pop("traces")
        return {**key, **flat_trace_key(self.traces)}

    @property
    def stage(self) -> int:
        return 2 if self.init else 1

    @property
    def uses_lora(self) -> bool:
        return self.stage == 2 and self.lora.rank > 0

    @property
    def peak_lr(self) -> float:
        return self.lr or (1e-3 if self.uses_lora else 3e-4)


# The flat options of `stvla train` before the trace settings were nested in `--traces.*`: still accepted
# on the command line and in a run's saved train_config.json, for one release.
# Short names of the dataset options, as a user bringing a dataset types them.
DATA_OPTIONS = {"camera": "data.camera", "depth": "data.depth", "intrinsics": "data.intrinsics", "fov": "data.fov",
                "cache_dir": "data.cache_dir", "image_fit": "data.image_fit"}

LEGACY_TRACE_OPTIONS = {
    "variant": "traces.variant",
    "buffer": "traces.tracker.buffer_length",
    "tracker_type": "traces.tracker_type",
    "cotracker_checkpoint": "traces.cotracker.checkpoint",
}


def flat_trace_key(traces: TraceConfig) -> dict[str, Any]:
    """Trace settings as cache keys spelt them before they were nested: `variant` and `buffer`, and the
    whole `traces` only when another setting differs from its default. (A run with another tracker_type
    used to add flat `tracker_type` / `cotracker_checkpoint` entries; it now adds `traces`: no kept cell
    used one.)"""
    key: dict[str, Any] = {"variant": traces.variant, "buffer": traces.buffer_length}
    default = TraceConfig()
    rest = dataclasses.replace(traces, variant=default.variant,
                               tracker=dataclasses.replace(traces.tracker, buffer_length=default.buffer_length))
    if config_key(rest) != config_key(default):
        key["traces"] = config_key(traces)
    return key


def upgrade_legacy_options(data: dict[str, Any]) -> dict[str, Any]:
    """A saved TrainConfig dict with the flat trace options of an older release, nested as today."""
    data = copy.deepcopy(data)
    for old, new in LEGACY_TRACE_OPTIONS.items():
        if old in data:
            value = data.pop(old)
            *parents, name = new.split(".")
            node = data
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = value
    return data


def fit_model_to_dataset(model: VLAConfig, features: dict[str, dict], where: str, action_layout: str = "") -> VLAConfig:
    """Stage 1's model shape where the dataset decides it: the image size, the state and action sizes and
    the action tokenizer, read from the action's names (stvla.policies.action_layout; `action_layout`
    "ee" or "joint" overrides them): no model flags to set by hand for a 7-D or a joint dataset."""
    if F.ACTION not in features:
        raise ValueError(f"{where} has no {F.ACTION!r} feature; it has {sorted(features)}")
    if F.STATE not in features and model.use_state:  # images and actions only: a model without the state token
        raise ValueError(f"{where} has no {F.STATE!r} feature (images and actions only): train without the state "
                         f"token with --model.use_state false")
    # `features` as read fitted to the model's square (EpisodeStore's image_size: `model_image_side`).
    height, width = features[F.RGB]["shape"][:2]
    if height != width:
        raise ValueError(f"{where}: the camera's images are {height}x{width}; the model reads square images "
                         f"(read the dataset with EpisodeStore(..., image_size=SIDE), which fits them)")
    if model.image_size not in (VLAConfig.image_size, height):  # set by hand, and not what the dataset is read at
        raise ValueError(f"--model.image_size {model.image_size} differs from {where}'s {height}x{width} images "
                         f"as read (EpisodeStore(..., image_size={model.image_size}) fits them)")
    cameras = 1 + sum(camera in features for camera in F.EXTRA_CAMERAS)
    if model.cameras not in (VLAConfig.cameras, cameras):
        raise ValueError(f"--model.cameras {model.cameras} differs from the {cameras} camera(s) of {where} "
                         f"(the --camera list sets them)")
    by_hand = model.action_layout if model.action_layout != VLAConfig.action_layout else ""  # --model.action_layout
    if action_layout and by_hand and action_layout != by_hand:
        raise ValueError(f"--action_layout {action_layout} differs from --model.action_layout {by_hand}: give one")
    layout = action_layout_for(features[F.ACTION], where, action_layout or by_hand)
    if layout.note:
        print(layout.note)
    grid, bins = model.grid, model.bins
    if layout.grid is not None:
        grid = dataclasses.replace(grid, has_rotation=layout.grid.has_rotation, rotation_dims=layout.grid.rotation_dims,
                                   translation_dims=layout.grid.translation_dims, gripper_dim=layout.grid.gripper_dim)
    else:  # grippers found by name, unless set by hand (--model.bins.gripper_dims)
        bins = dataclasses.replace(bins, gripper_dims=bins.gripper_dims or layout.gripper_dims)
    state_dim = int(features[F.STATE]["shape"][0]) if F.STATE in features else model.state_dim
    return dataclasses.replace(model, image_size=int(height), state_dim=state_dim,
                               action_dim=int(features[F.ACTION]["shape"][0]), grid=grid, cameras=cameras,
                               action_layout=layout.kind, bins=bins)


def refuse_grid_on_joints(init: str, action: dict, where: str) -> None:
    """Stage 2 keeps the --init checkpoint's action layout: one whose grid reads an end effector cannot read
    an action whose names say joints."""
    _, init_config = read_checkpoint_config(init)
    joints = [name for name in action_names(action) if says_joint(name)]
    if init_config["vla"].get("action_layout", VLAConfig.action_layout) == "ee" and joints:
        raise ValueError(f"checkpoint {init} reads an end effector's x y z (roll pitch yaw) gripper; {where}'s "
                         f"action names say joints ({', '.join(joints[:3])}, ...): train stage 1 on it instead")


def model_image_side(config: TrainConfig, store: EpisodeStore) -> int:
    """The model's square side the dataset's images are fitted to: the --init checkpoint's in stage 2;
    else --model.image_size when given, else a square camera's own side (read as it is), else the default."""
    if config.init:
        _, init_config = read_checkpoint_config(config.init)
        return int(init_config["vla"].get("image_size", VLAConfig.image_size))
    height, width = store.features[F.RGB]["shape"][:2]
    if config.model.image_size != VLAConfig.image_size or height != width:
        return config.model.image_size
    return int(height)


def robot_type_of(store: EpisodeStore) -> str:
    """The robot the dataset names (info.json's robot_type), "generic" when it names none."""
    return str(store.info.get("robot_type") or "generic")


def camera_of(store: EpisodeStore) -> CameraConfig:
    """What a policy keeps of the dataset's cameras for control (stvla.policies.processor.CameraConfig):
    the default for a dataset whose cameras are the model's square, named as the toolkit names them."""
    roles = store.roles
    given = roles.intrinsics if roles is not None else None
    return CameraConfig(sizes={role: list(size) for role, size in store.fitted.items()}, image_fit=store.image_fit,
                        intrinsics=() if given is None else tuple(float(given[i, j]) for i, j in
                                                                  ((0, 0), (1, 1), (0, 2), (1, 2))),
                        features={role: key for role, key in (roles.stored if roles else {}).items() if role != key})


# --model fields the policy type sets (TraceVLA's second image, LLARVA's prompt and trace head), with
# the option that sets each instead.
SET_BY_POLICY_TYPE = {"two_images": "--policy tracevla", "language": "--policy llarva",
                      "trace_points": "--trace_points (llarva)", "trace_tokens": "--policy tracetokens"}


def refuse_unused_model_options(config: TrainConfig, used: VLAConfig) -> None:
    """A --model option the run would not use is an error, not silently dropped: one the policy type sets
    otherwise, and in stage 2 one that differs from the --init checkpoint's model (`used` is the model built)."""
    def plain(value: Any) -> Any:  # as JSON holds it: a checkpoint's config has lists where a default has tuples
        return json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value))

    default = VLAConfig()
    for field_ in dataclasses.fields(VLAConfig):
        name, asked = field_.name, plain(getattr(config.model, field_.name))
        if asked == plain(getattr(default, name)) or asked == plain(getattr(used, name)):
            continue
        if name in SET_BY_POLICY_TYPE:
            raise ValueError(f"--model.{name} {asked!r} is not what policy {config.policy!r} uses "
                             f"({getattr(used, name)!r}): it is set by the policy type; use {SET_BY_POLICY_TYPE[name]}")
        raise ValueError(f"--model.{name} {asked!r} differs from the --init checkpoint's ({getattr(used, name)!r}, "
                         f"{config.init}): stage 2 takes the model from --init; set it in stage 1")


def build_policy(config: TrainConfig, image_size: int, camera: CameraConfig | None = None,
                 robot_type: str = "") -> Policy:
    """The policy this run trains, at the dataset's image size and with the run's trace settings; `camera`:
    the dataset's cameras as control will send them (`camera_of`); `robot_type`: the dataset's, which
    LLARVA's prompt names (with the control mode of the action layout and the state's size).

    The model's shape comes from `--model` in stage 1 (fitted to the dataset by `fit_model_to_dataset`)
    and from the `--init` checkpoint in stage 2 (so its weights fit), except for what the policy type
    defines: TraceVLA's second image, LLARVA's prompt tokens and its trace head (whose size
    `--trace_points` may set); and stage 2 may add stacked previous frames (`--model.previous_frames`)
    to a base made without them, their index embedding then trained with the LoRA adapters, or drop its
    state token (`--model.use_state false`: the papers' inputs, image, depth and instruction).
    """
    cls = policy_class(config.policy)
    policy_config = cls.config_class()
    defaults = policy_config.vla
    vla = config.model
    init_config: dict[str, Any] = {}
    if config.init:
        _, init_config = read_checkpoint_config(config.init)
        vla = config_from_dict(VLAConfig, init_config["vla"], f"{config.init}/config.json")
        vla = dataclasses.replace(vla, previous_frames=config.model.previous_frames or vla.previous_frames,
                                  use_state=vla.use_state and config.model.use_state)
        if vla.image_size != image_size:
            raise ValueError(f"checkpoint {config.init} was built for {vla.image_size}x{vla.image_size} "
                             f"images; dataset {config.dataset} has {image_size}x{image_size}")
        if config.action_layout and config.action_layout != vla.action_layout:
            raise ValueError(f"--action_layout {config.action_layout} differs from the --init checkpoint's "
                             f"({vla.action_layout}, {config.init}): its action heads read that layout")
    trace_points = defaults.trace_points if not config.init else vla.trace_points
    if config.trace_points >= 0:
        if defaults.language != "prompt":
            raise ValueError(f"--trace_points applies to llarva only, not to {config.policy!r}")
        trace_points = config.trace_points
    policy_config.vla = dataclasses.replace(vla, image_size=image_size, two_images=defaults.two_images,
                                            language=defaults.language, trace_points=trace_points,
                                            trace_tokens=defaults.trace_tokens)
    refuse_unused_model_options(config, policy_config.vla)
    if hasattr(policy_config, "prompt"):  # LLARVA's prompt says which robot, controlled how, with what proprio
        used = policy_config.vla
        policy_config.prompt = dataclasses.replace(
            policy_config.prompt, robot_type=robot_type or policy_config.prompt.robot_type,
            control_mode=control_mode(used.action_layout, used.grid.has_rotation), state_dim=used.state_dim)
    if camera is not None:
        policy_config.camera = camera
    if hasattr(policy_config, "trace_space"):
        # A trace-token checkpoint's encoder read its own space: stage 2 keeps it.
        kept = init_config.get("trace_space")
        if kept and config.trace_space and config.trace_space != kept:
            raise ValueError(f"--trace_space {config.trace_space} differs from the --init checkpoint's ({kept}, "
                             f"{config.init}): its trace encoder was trained on {kept} points")
        policy_config = dataclasses.replace(policy_config, trace_space=config.trace_space or kept
                                            or policy_config.trace_space)
    elif config.trace_space:
        raise ValueError(f"--trace_space applies to tracetokens only, not to {config.policy!r}")
    if hasattr(policy_config, "traces"):
        checkpoint = config.traces.cotracker.checkpoint
        # Absolute: the policy keeps it, and is loaded from other working directories.
        policy_config.traces = dataclasses.replace(config.traces, cotracker=dataclasses.replace(
            config.traces.cotracker, checkpoint=str(Path(checkpoint).resolve()) if checkpoint else ""))
    # Stage 2 loads every weight from --init: a PaliGemma backbone's original weights need not be read.
    return make_policy(config.policy, policy_config, backbone_weights=not config.init)


def load_train_config(path: str | Path) -> TrainConfig:
    """A run's saved train_config.json (one written by an older release with flat trace options too)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read config {path}: {error}") from error
    return config_from_dict(TrainConfig, upgrade_legacy_options(data), str(path))


def add_lora(policy: Policy, settings: LoraSettings, train_also: list[str] = ()) -> None:
    """Wrap every linear layer of the trunk with LoRA adapters and freeze everything else but the
    parameters named in `train_also` (those the --init checkpoint did not have: frozen, they would stay
    at their random initial values)."""
    from peft import LoraConfig, get_peft_model

    trunk = policy.model.trunk
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=trunk.lora_target_modules())
    named = dict(policy.model.named_parameters())
    new = [named[name] for name in train_also if name in named]  # before wrapping renames the trunk's
    for parameter in policy.parameters():
        parameter.requires_grad_(False)
    policy.model.trunk = get_peft_model(trunk, lora)  # the adapters are trainable ...
    for parameter in new:  # ... and what the checkpoint did not have
        parameter.requires_grad_(True)


def merge_lora(policy: Policy) -> None:
    """Fold the adapters into the trunk's weights (a plain trunk again, for export)."""
    if hasattr(policy.model.trunk, "merge_and_unload"):
        policy.model.trunk = policy.model.trunk.merge_and_unload()


def cosine_schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# --- training state on disk (safetensors + JSON, no pickle) --------------------------------------------
def save_training_state(directory: Path, policy: Policy, optimizer: torch.optim.Optimizer, step: int,
                        average: WeightAverage | None = None, write: bool = True) -> None:
    """The training state as whole tensors (sharded ones gathered: then every rank calls this, and only the
    one with `write` writes)."""
    model = {k: distributed.full(v).detach().cpu().contiguous() for k, v in policy.model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    tensors = {f"{pid}.{name}": distributed.full(value).cpu().contiguous()
               for pid, slots in optimizer_state["state"].items() for name, value in slots.items()}
    if not write:
        return
    tensors["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout on a GPU draws from its own generators
        tensors.update({f"cuda_rng.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    averaged = average.state_dict() if average is not None else {}

    def write_state(tmp: Path) -> None:
        save_file(model, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        if averaged:
            save_file(averaged, str(tmp / "weight_average.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "param_groups": optimizer_state["param_groups"]}))

    needed = sum(t.numel() * t.element_size() for group in (model, tensors, averaged) for t in group.values())
    replace_directory(directory, write_state, needed)


def replace_directory(directory: Path, write: Callable[[Path], None], needed_bytes: int = 0) -> None:
    """`write(tmp)` fills a temporary folder that then replaces `directory`: a kill leaves the old one or the
    new. A write that fails (a full disk) removes the temporary folder, leaves the old one, and is one line
    naming the folder, the bytes needed and those free."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except (OSError, SafetensorError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(directory.parent if directory.parent.exists() else Path.cwd()).free
        kept = "; the previous one is kept" if directory.exists() else ""
        raise OSError(f"cannot write {directory} ({first_line(error)}): it needs about {needed_bytes / 2**20:.0f} MiB, "
                      f"{free / 2**20:.0f} MiB are free there{kept}") from None
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def load_weights_state(directory: Path, policy: Policy, average: WeightAverage | None = None) -> None:
    """A checkpoint's weights (and weight average) into the policy (before it is sharded, with --fsdp)."""
    policy.model.load_state_dict(read_weights(directory / "model.safetensors"))
    if average is not None:
        average.load_state_dict(read_weights(directory / "weight_average.safetensors"))


def load_optimizer_state(directory: Path, optimizer: torch.optim.Optimizer) -> int:
    """A checkpoint's optimiser state (split like its parameters, if they are sharded), RNG and step."""
    tensors = read_weights(directory / "optimizer.safetensors")
    meta = json.loads((directory / "state.json").read_text())
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key != "torch_rng" and not key.startswith("cuda_rng."):
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = distributed.like(value, parameters[int(pid)])
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["torch_rng"])
    cuda_states = [tensors[f"cuda_rng.{i}"] for i in range(sum(k.startswith("cuda_rng.") for k in tensors))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return int(meta["step"])


# What a run keeps once it has trained: a checkpoint, the policy, the best by validation, an evaluated
# policy. A new --out with none of them (a refusal, a full disk before the first checkpoint) is removed whole.
@writes_to_out("stvla train", finished=("checkpoint", "policy", "best", "evals/*/policy"))
def train(config: TrainConfig, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train as configured; returns the final policy directory. `stop_after` ends early (for tests).
    Launched by torchrun, every process runs this with its share of each batch (stvla.train.distributed)."""
    if not config.dataset:
        raise ValueError("a dataset is required (--dataset DIR)")
    ranks, device = distributed.start(config.device)
    finished = False
    try:
        result = _train(config, ranks, device, progress and ranks.is_main, stop_after)
        finished = True
        return result
    finally:
        distributed.stop(ranks, together=finished)


def run_settings(config: TrainConfig) -> str:
    """What a run's outcome depends on, as JSON (tuples and lists alike), for resuming: every setting, but the
    trace settings only for a policy that reads traces (a new tracker default does not stop a run without)."""
    settings = config_to_dict(config)
    if "traces" not in {f.name for f in dataclasses.fields(policy_class(config.policy).config_class)}:
        settings.pop("traces", None)
    return json.dumps(settings)


def check_dataset(store: EpisodeStore) -> None:
    """What training checks before anything is decoded or trained (and `stvla info` with it): info.json
    and meta/episodes against the data files (columns, row counts), every video file opening as the video
    info.json describes, the task strings control will accept as instructions (or never act), and every
    episode's rows in time order with the tasks the tasks file and meta/episodes give, its actions, states
    and camera intrinsics finite and plausible. Raises the refusal as one line."""
    store.check_schema()
    store.check_video_files()
    for index, task in enumerate(store.tasks):
        check_instruction(task, f"{store.root}/meta/tasks.parquet: task {index}")
    vectors = [key for key in (F.ACTION, F.STATE, F.INTRINSICS) if key in store.features]
    for episode in range(store.num_episodes):
        values = store.episode(episode, [F.TASK_INDEX, *vectors])
        for key in vectors:
            check_decoded(store, episode, key, values[key])


def no_validation_note(config: TrainConfig, store: EpisodeStore, held_out: list[int]) -> str:
    """Where --val_episodes asks for validation and no task has the episodes to give it (a task keeps
    MIN_TRAINING to train on), a line saying so; a number given by hand is refused then instead (the run
    would have no validation at all), naming what a task needs and what the dataset has."""
    if not config.val_episodes or held_out:
        return ""
    needed = config.val_episodes + MIN_TRAINING
    most = max((len(episodes) for episodes in episodes_by_task(store).values()), default=0)
    if config.val_episodes != TrainConfig.val_episodes:  # not the default: asked for on purpose
        raise ValueError(f"--val_episodes {config.val_episodes} holds out nothing: a task needs {needed} episodes "
                         f"to hold {config.val_episodes} out and keep {MIN_TRAINING} to train on, and the tasks of "
                         f"dataset {store.root} have at most {most}: give --val_episodes 0 (no validation) or fewer")
    return (f"dataset {store.root}: no task has {needed} episodes ({config.val_episodes} to hold out, {MIN_TRAINING} "
            f"to train on): none is held out, and the run has no validation loss")


def _train(config: TrainConfig, ranks: distributed.Ranks, device: torch.device, progress: bool,
           stop_after: int | None) -> Path:
    store = EpisodeStore(config.dataset, config.data)
    check_dataset(store)
    # Images of another size or aspect are fitted to the model's square as they are read.
    store = EpisodeStore(config.dataset, config.data, image_size=model_image_side(config, store))
    if store.fitted and ranks.is_main:
        height, width = store.fitted[F.RGB] if F.RGB in store.fitted else next(iter(store.fitted.values()))
        print(f"dataset {store.root}: {height}x{width} images fitted to the model's {store.image_size}x"
              f"{store.image_size} (--image_fit {store.image_fit}; --model.image_size sets the side)")
    if config.init:
        refuse_grid_on_joints(config.init, store.features.get(F.ACTION, {}), f"dataset {store.root}")
    else:
        config = dataclasses.replace(config, model=fit_model_to_dataset(config.model, store.features,
                                                                        f"dataset {store.root}", config.action_layout))
        lacks = next((what for key, what in ((F.DEPTH, "depth"), (F.INTRINSICS, "camera intrinsics (--fov)"))
                      if key not in store.features), None)
        if lacks and config.model.use_ego3d and config.policy == "tracevla":
            # TraceVLA's paper reads RGB only: on a dataset without depth (or its camera) it trains so, without Ego3D.
            print(f"dataset {store.root} has no {lacks}: tracevla trains on RGB only (--model.use_ego3d false)")
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, use_ego3d=False))
    held_out = held_out_episodes(store, config.val_episodes)
    note = no_validation_note(config, store, held_out)
    if note and ranks.is_main:
        print(note)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    if (out / "checkpoint").exists() and config_path.exists():
        if run_settings(load_train_config(config_path)) != run_settings(config):
            raise ValueError(f"{out} holds a run with another configuration ({config_path}); "
                             f"use another --out or the same settings to resume")
    distributed.barrier(ranks)  # every rank has read the saved config before rank 0 writes it
    if ranks.is_main:
        save_config(config, config_path)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    policy = build_policy(config, store.features[F.RGB]["shape"][0], camera_of(store), robot_type_of(store))
    cameras = 1 + sum(camera in store.features for camera in F.EXTRA_CAMERAS)
    if policy.config.vla.cameras != cameras:
        raise ValueError(f"checkpoint {config.init} reads {policy.config.vla.cameras} camera(s); dataset "
                         f"{store.root} gives {cameras} (--camera)")

    eval_tasks = simulator_tasks(store) if config.eval_every else []

    def training_samples() -> TrainingSamples:
        return TrainingSamples(store, policy, progress=progress, checkpoint=config.init or None,
                               augment=config.augment, cache_dir=config.data.cache_dir, held_out=held_out)

    # Rank 0 builds the caches the others then read: no two processes write the same file.
    samples = training_samples() if ranks.is_main else None
    distributed.barrier(ranks)
    samples = samples or training_samples()
    fresh: list[str] = []
    if config.init:
        # A state token dropped in stage 2 leaves the checkpoint's state weights unread.
        fresh = policy.load_weights(config.init, leave_out=() if policy.config.vla.use_state else ("state.",))
        if fresh and progress:
            print(f"parameters new to {config.policy} (not in {config.init}): {fresh}")
    else:
        policy.fit_statistics(samples.actions, samples.states)
    if config.uses_lora:
        add_lora(policy, config.lora, train_also=fresh)
    policy.to(device)
    policy.train()
    sharded = ranks.distributed and config.fsdp
    if sharded and config.ema:
        raise ValueError("--ema is not available with --fsdp yet: train with one or the other")
    average = WeightAverage(policy.model, config.ema) if config.ema else None
    resuming = (out / "checkpoint").exists()
    if resuming:
        load_weights_state(out / "checkpoint", policy, average)  # every rank, the same file
    if sharded:
        distributed.shard(policy, ranks, device)
    # Gradients all-reduced across ranks (a run of one calls the policy itself). Some parameters take no part
    # in a given policy's loss (heads of another action layout, say): DDP is told to look for them.
    model = torch.nn.parallel.DistributedDataParallel(
        policy, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True) if ranks.distributed and not sharded else policy
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.peak_lr, weight_decay=config.weight_decay)
    step = load_optimizer_state(out / "checkpoint", optimizer) if resuming else 0
    # Created after a resume's optimiser state is loaded, so the schedule continues at `step`.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: cosine_schedule(i, config.warmup_steps, config.steps), last_epoch=step - 1)

    bar = tqdm(total=config.steps, initial=step, desc=f"train {config.policy} stage {config.stage}", unit="step",
               disable=not progress, dynamic_ncols=True)
    run_log = RunLog(out, config.log, config_to_dict(config), enabled=ranks.is_main)
    record = RunRecord(out, held_out)
    # Validation runs on rank 0, on an exportable copy of the weights (the EMA average, LoRA merged): what
    # `best/` would hold. Sharded weights (--fsdp) are whole only at the end: no validation then.
    validating = ranks.is_main and not sharded
    frames = validation_frames(samples.val_frames) if validating else np.empty(0, np.int64)
    val_batches = [samples.batch(chunk) for chunk in np.array_split(frames, -(-len(frames) // config.batch_size))
                   ] if len(frames) else []
    started, last_saved = time.perf_counter(), time.monotonic()
    run_started, validation_seconds = time.perf_counter(), 0.0
    while step < config.steps and (stop_after is None or step < stop_after):
        indices = samples.indices_for_step(step, config.batch_size, config.seed)
        batch = samples.batch(indices, np.random.default_rng([config.seed, step, 1]))
        loss, logs = model(batch_to(distributed.share_of_batch(batch, ranks), device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        if average is not None:
            average.update(policy.model)
        step += 1
        logs["loss"] = distributed.sum_over_ranks(logs["loss"], ranks, device)  # the global batch's loss
        if not math.isfinite(logs["loss"]):  # every rank sees the same global loss, so all stop together
            raise ValueError(f"step {step}: the training loss is {logs['loss']}: nothing of this run after its last "
                             f"checkpoint is saved (check the dataset with `stvla info`, or lower --lr)")
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.3f}")
        if step % config.log.every == 0 or step == config.steps:
            run_log.record(step, {"lr": schedule.get_last_lr()[0], **logs, "samples_per_s": config.log.every
                                  * config.batch_size / max(time.perf_counter() - started, 1e-9)})
            started = time.perf_counter()
        if validating and (val_batches or eval_tasks) and (step % config.val_every == 0 or step == config.steps
                                                           or (config.eval_every and step % config.eval_every == 0)):
            validating_since = time.perf_counter()
            validate(step, policy, average, val_batches, eval_tasks, config, run_log, record, device, store.fps)
            started = time.perf_counter()  # validation is not counted in the throughput
            validation_seconds += started - validating_since
        due = step % config.save_every == 0 or step == config.steps
        if config.save_every_minutes and not due:  # a kill loses minutes of work at most, whatever a step costs
            late = time.monotonic() - last_saved >= 60 * config.save_every_minutes
            due = distributed.sum_over_ranks(float(late), ranks, device) > 0  # every rank decides alike
        if due:
            last_saved = time.monotonic()
            if ranks.is_main or sharded:  # sharded: every rank gives its shards, rank 0 writes
                save_training_state(out / "checkpoint", policy, optimizer, step, average, write=ranks.is_main)
            distributed.barrier(ranks)  # no rank goes on (or resumes) before the checkpoint is whole
    bar.close()
    loop = time.perf_counter() - run_started  # this process's steps (since it started or resumed)
    if step < config.steps:
        return out / "checkpoint"
    if sharded:  # the whole weights, into an unsharded copy of the policy (built alike) that is exported
        weights = {k: distributed.full(v).detach().cpu() for k, v in policy.model.state_dict().items()}
        policy = build_policy(config, store.features[F.RGB]["shape"][0], camera_of(store), robot_type_of(store))
        if config.uses_lora:
            add_lora(policy, config.lora)
        policy.model.load_state_dict(weights)
    if ranks.is_main:
        save_atomically(exportable(policy, average), out / "policy", store.fps)
        record.write(finished=True, seconds={"loop": round(loop, 3), "logging": round(run_log.seconds, 3),
                                             "validation": round(validation_seconds, 3)})
        run_log.close()
    distributed.barrier(ranks)
    return out / "policy"


def exportable(policy: Policy, average: WeightAverage | None) -> Policy:
    """A copy of the policy as it is exported: the weight average (with --ema) in place, LoRA merged."""
    policy = copy.deepcopy(policy)
    if average is not None:
        average.copy_to(policy.model)
    merge_lora(policy)
    return policy.eval()


def save_atomically(policy: Policy, directory: Path, fps: int) -> Path:
    """save_pretrained into a temporary folder renamed to `directory`: a kill leaves the old one or the new."""
    needed = sum(t.numel() * t.element_size() for t in policy.model.state_dict().values())
    replace_directory(directory, lambda tmp: policy.save_pretrained(tmp, fps=fps), needed)
    return directory


def validate(step: int, policy: Policy, average: WeightAverage | None, val_batches: list, eval_tasks: list[str],
             config: TrainConfig, run_log: RunLog, record: RunRecord, device: torch.device, fps: int) -> None:
    """The validation loss (every val_every steps) and closed-loop success (every eval_every steps) of the
    weights as they would be exported; a new best is exported to <out>/best."""
    candidate = exportable(policy, average)
    out = Path(config.out)
    if val_batches and (step % config.val_every == 0 or step == config.steps):
        loss = validation_loss(candidate, val_batches, device)
        run_log.record(step, {"loss": loss}, split="val")
        if not eval_tasks:
            record.offer(step, "val_loss", loss, lambda d: save_atomically(candidate, d, fps))
    if eval_tasks and (step % config.eval_every == 0 or step == config.steps):
        # The evaluation must not move the training's random streams (it builds a policy, which draws).
        rng = torch.get_rng_state()
        saved = save_atomically(candidate, out / "evals" / f"step-{step:07d}" / "policy", fps)
        rate = closed_loop_success(saved, eval_tasks, config.eval_episodes, saved.parent / "eval")
        torch.set_rng_state(rng)
        run_log.record(step, {"success_rate": rate}, split="eval")
        record.offer(step, "success_rate", rate, lambda d: save_atomically(candidate, d, fps))
