"""Training samples: frames of a recorded dataset, with the inputs a given policy consumes.

Reads through the decoded cache (and the traced cache when the policy uses traces), so no epoch
decodes video or re-runs the tracker. The order of samples is a pure function of (seed, step), which
is what makes a resumed run reach the same weights as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stvla.data.cache import DecodedCache
from stvla.data.collect import DEPTH_KEY, RGB_KEY
from stvla.data.store import EpisodeStore
from stvla.data.traced import INTRINSICS_KEY, TracedCache
from stvla.policies.base import Policy
from stvla.policies.prompt import HISTORY_LENGTH
from stvla.traces.future import future_trace_targets

STATE_KEY = "observation.state"
ACTION_KEY = "action"
EE_POSITION_KEY = "observation.ee.position"
POSE_KEY = "observation.camera.pose"


class TrainingSamples:
    """Batches for `policy` from the dataset at `root`: model inputs + action chunks with a pad mask."""

    def __init__(self, root: str | Path, policy: Policy, progress: bool = True, checkpoint: str | None = None):
        """`checkpoint` names where the policy's shape came from, for error messages."""
        store = EpisodeStore(root)
        self._check_compatible(store, policy, checkpoint)
        self.policy = policy
        self.decoded = DecodedCache(root, [RGB_KEY, DEPTH_KEY, INTRINSICS_KEY, STATE_KEY, ACTION_KEY,
                                           "task_index"], progress=progress)
        self.traced = None
        if policy.tracer is not None:
            self.traced = TracedCache(root, policy.trace_config, with_rgb=policy.uses_traced_rgb, progress=progress)
        self.instructions = store.tasks
        self.chunk_size = policy.config.vla.chunk_size
        # For every frame, the frame indices of its action chunk and which of them lie past the episode end.
        ends = np.repeat(self.decoded.episode_starts + self.decoded.episode_lengths, self.decoded.episode_lengths)
        wanted = np.arange(len(self.decoded))[:, None] + np.arange(self.chunk_size)[None]
        self.chunk_is_pad = wanted >= ends[:, None]
        self.chunk_index = np.minimum(wanted, ends[:, None] - 1)
        # The proprio history of every frame (LLARVA): its episode's HISTORY_LENGTH latest states, never
        # reaching into the previous episode (those rows are zero).
        starts = np.repeat(self.decoded.episode_starts, self.decoded.episode_lengths)
        back = np.arange(len(self.decoded))[:, None] - np.arange(HISTORY_LENGTH - 1, -1, -1)[None]
        self.history_valid = back >= starts[:, None]
        self.history_index = np.maximum(back, starts[:, None])
        self.trace_targets = self.trace_masks = None
        if policy.config.vla.trace_points:
            self.trace_targets, self.trace_masks = self._future_traces(root, policy.config.vla.trace_points)

    def __len__(self) -> int:
        return len(self.decoded)

    @property
    def actions(self) -> np.ndarray:
        return np.asarray(self.decoded.arrays[ACTION_KEY])

    @property
    def states(self) -> np.ndarray:
        return np.asarray(self.decoded.arrays[STATE_KEY])

    def indices_for_step(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """The frame indices of training step `step`: epoch-wise permutations seeded by (seed, epoch)."""
        per_epoch = max(len(self) // batch_size, 1)
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(self))
        return np.sort(order[position * batch_size:(position + 1) * batch_size])

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for frames `indices`, plus "action" (B, chunk, D) and "action_is_pad" (B, chunk)."""
        arrays = self.decoded.arrays
        frames = {"rgb": arrays[RGB_KEY][indices], "intrinsics": arrays[INTRINSICS_KEY][indices],
                  "state": arrays[STATE_KEY][indices], "depth": arrays[DEPTH_KEY][indices]}
        traced_shown = np.zeros(len(indices), dtype=bool)
        if self.traced is not None:
            traced_shown = np.asarray(self.traced.arrays["has_traces"][indices])
            if self.policy.depth_source == "traced":
                frames["depth"] = self.traced.arrays["traced_depth"][indices]
            if self.policy.uses_traced_rgb:
                # TraceVLA: a share of the samples is shown [original, original] with the plain prompt.
                if rng is not None:
                    traced_shown &= rng.random(len(indices)) >= self.policy.config.untraced_fraction
                traced_rgb = np.asarray(self.traced.arrays["traced_rgb"][indices]).copy()
                traced_rgb[~traced_shown] = frames["rgb"][~traced_shown]
                frames["rgb_traced"] = traced_rgb
        if self.policy.uses_state_history:
            states = np.asarray(arrays[STATE_KEY])[self.history_index[indices]]
            frames["state_history"] = np.where(self.history_valid[indices][..., None], states, 0.0)
        instructions = [self.instructions[int(t)] for t in np.asarray(arrays["task_index"][indices])]
        batch = self.policy.model_inputs(frames, instructions, traced_shown, rng)
        if self.trace_targets is not None:
            batch["trace_target"] = torch.from_numpy(self.trace_targets[indices])
            batch["trace_mask"] = torch.from_numpy(self.trace_masks[indices])
        batch["action"] = torch.from_numpy(np.asarray(arrays[ACTION_KEY][self.chunk_index[indices]], np.float32))
        batch["action_is_pad"] = torch.from_numpy(self.chunk_is_pad[indices])
        return batch

    def _future_traces(self, root: str | Path, points: int) -> tuple[np.ndarray, np.ndarray]:
        """LLARVA's targets for every frame: (N, points, 2) future end-effector pixels and their mask."""
        store = EpisodeStore(root)
        keys = [EE_POSITION_KEY, INTRINSICS_KEY, POSE_KEY]
        missing = [key for key in keys if key not in store.features]
        if missing:
            raise ValueError(f"dataset {store.root} has no {missing}: trace prediction needs the end-effector "
                             f"position and the camera of every frame")
        targets, masks = [], []
        for episode in range(store.num_episodes):
            frames = store.episode(episode, keys)
            target, mask = future_trace_targets(frames[EE_POSITION_KEY], frames[INTRINSICS_KEY], frames[POSE_KEY],
                                                points)
            targets.append(target)
            masks.append(mask)
        return np.concatenate(targets), np.concatenate(masks)

    @staticmethod
    def _check_compatible(store: EpisodeStore, policy: Policy, checkpoint: str | None) -> None:
        features = store.features
        vla = policy.config.vla
        where = f"dataset {store.root}"
        expects = f"checkpoint {checkpoint} expects" if checkpoint else "the policy expects"
        if policy.config.vla.use_ego3d and (DEPTH_KEY not in features or INTRINSICS_KEY not in features):
            raise ValueError(f"{where} has no {DEPTH_KEY} / {INTRINSICS_KEY}: policy {policy.name!r} needs depth "
                             f"and camera intrinsics")
        size = features[RGB_KEY]["shape"][:2] if RGB_KEY in features else None
        if size != [vla.image_size, vla.image_size]:
            raise ValueError(f"{where} has {RGB_KEY} of size {size}; policy {policy.name!r} was built for "
                             f"{vla.image_size}x{vla.image_size} images")
        action_shape = features.get(ACTION_KEY, {}).get("shape")
        if action_shape != [vla.action_dim]:
            raise ValueError(f"{where} has actions of shape {action_shape}; {expects} [{vla.action_dim}]")
        state_shape = features.get(STATE_KEY, {}).get("shape")
        if state_shape != [vla.state_dim]:
            raise ValueError(f"{where} has {STATE_KEY} of shape {state_shape}; {expects} [{vla.state_dim}]")
