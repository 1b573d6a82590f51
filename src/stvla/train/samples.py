"""Training samples: frames of a recorded dataset, fed to a policy through its input processor.

Recorded features come from the dataset's decoded cache; what the processor derives along an episode
(traced depth, TraceVLA's traced image) is made once by the processor's own `trace_frame`, stepped
through every episode as control steps it, and cached. So no epoch decodes video or re-runs the
tracker, and training sees what control sees. The order of samples is a pure function of (seed, step),
which is what makes a resumed run reach the same weights as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stvla import features as F
from stvla.data.cache import DecodedCache, DerivedCache
from stvla.data.roles import DataConfig
from stvla.data.store import EpisodeStore
from stvla.policies.base import Policy
from stvla.policies.prompt import HISTORY_LENGTH
from stvla.traces.future import future_trace_targets
from stvla.train.augment import AugmentConfig, augment_batch


# What LLARVA's future-trace targets are made of: the end effector's position and the camera of every frame.
TRACE_TARGET_INPUTS = (F.EE_POSITION, F.INTRINSICS, F.CAMERA_POSE)


def check_trace_targets(store: EpisodeStore) -> None:
    """Refuse, in one line, a dataset LLARVA's future-trace targets cannot be made from (a robot that records
    joints only, say), naming the way out."""
    missing = [key for key in TRACE_TARGET_INPUTS if key not in store.features]
    if missing:
        raise ValueError(f"dataset {store.root} has no {', '.join(missing)}: llarva's future-trace targets need the "
                         f"end-effector position and the camera of every frame; train with --trace_points 0 "
                         f"(no trace prediction)")


class TrainingSamples:
    """Batches for `policy` from a dataset: model inputs + action chunks with a pad mask."""

    def __init__(self, dataset: EpisodeStore | str | Path, policy: Policy, progress: bool = True,
                 checkpoint: str | None = None, augment: AugmentConfig | None = None, cache_dir: str = "",
                 held_out: list[int] | None = None):
        """`dataset`: an opened store, or its directory (read with the default roles). `checkpoint` names
        where the policy's shape came from, for error messages. `augment`: what a training step (a batch
        drawn with an rng) augments. `cache_dir`: the cache folder (stvla.data.cache.cache_root).
        `held_out`: episodes kept for validation (`val_frames`), never drawn for a training step."""
        store = dataset if isinstance(dataset, EpisodeStore) else EpisodeStore(dataset, DataConfig())
        processor = policy.processor
        expects = f"checkpoint {checkpoint} expects" if checkpoint else "the policy expects"
        processor.check_features(store.features, f"dataset {store.root}", expects)
        if policy.config.vla.trace_points:  # refused before any cache is built
            check_trace_targets(store)
        self.processor = processor
        self.augment = augment or AugmentConfig()
        self.decoded = DecodedCache(store, progress=progress, cache_dir=cache_dir)
        # The state too, read by the model or not: its statistics are fitted in stage 1 (when the dataset has one).
        state = [F.STATE] if F.STATE in store.features else []
        self.arrays = self.decoded.require(list(dict.fromkeys([*processor.input_features(), *state, F.ACTION,
                                                               F.TASK_INDEX])))
        if processor.tracer is not None:
            traced = DerivedCache(self.decoded, processor.trace_cache_name(), processor.trace_inputs(),
                                  processor.trace_outputs(), processor.reset, processor.trace_frame)
            self.arrays = {**self.arrays, **traced.arrays}
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
        # The frames before each frame (frame stacking), never reaching into the previous episode: the
        # episode's first frame stands in for those before it.
        count = policy.config.vla.previous_frames
        self.previous_index = np.maximum(np.arange(len(self.decoded))[:, None] - np.arange(count, 0, -1)[None],
                                         starts[:, None])
        validation = np.isin(np.repeat(np.arange(len(self.decoded.episode_lengths)), self.decoded.episode_lengths),
                             held_out or [])
        self.train_frames = np.flatnonzero(~validation)
        self.val_frames = np.flatnonzero(validation)
        self.trace_targets = self.trace_masks = None
        if policy.config.vla.trace_points:
            self.trace_targets, self.trace_masks = self._future_traces(policy.config.vla.trace_points)

    def __len__(self) -> int:
        return len(self.decoded)

    @property
    def actions(self) -> np.ndarray:
        """The training frames' actions (what the normaliser and the action grid are fitted on)."""
        return np.asarray(self.arrays[F.ACTION])[self.train_frames]

    @property
    def states(self) -> np.ndarray | None:
        """The training frames' states (None: the dataset has none, and the model reads none)."""
        return np.asarray(self.arrays[F.STATE])[self.train_frames] if F.STATE in self.arrays else None

    def indices_for_step(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """The frame indices of training step `step`: epoch-wise permutations of the training frames seeded
        by (seed, epoch)."""
        per_epoch = max(len(self.train_frames) // batch_size, 1)
        epoch, position = divmod(step, per_epoch)
        order = self.train_frames[np.random.default_rng([seed, epoch]).permutation(len(self.train_frames))]
        return np.sort(order[position * batch_size:(position + 1) * batch_size])

    def frames(self, indices: np.ndarray) -> dict[str, object]:
        """The frames `indices` as the processor reads them (batch-major, dataset keys)."""
        frames: dict[str, object] = {key: self.arrays[key][indices] for key in self.arrays
                                     if key not in (F.ACTION, F.TASK_INDEX)}
        if F.STATE not in self.processor.input_features():
            frames.pop(F.STATE, None)
        if self.previous_index.shape[1]:
            frames[F.PREVIOUS_RGB] = np.asarray(self.arrays[F.RGB])[self.previous_index[indices]]
        frames[F.TASK] = [self.instructions[int(t)] for t in np.asarray(self.arrays[F.TASK_INDEX][indices])]
        if self.processor.uses_state_history:
            states = np.asarray(self.arrays[F.STATE])[self.history_index[indices]]
            frames[F.STATE_HISTORY] = np.where(self.history_valid[indices][..., None], states, 0.0)
        return frames

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for frames `indices`, plus the action chunks and their pad mask (and LLARVA's trace
        targets). A training step passes `rng`, which draws the inputs' noise and augmentation (the
        processor's, then `augment`'s random shift)."""
        batch = self.processor.model_inputs(self.frames(indices), rng, augment=rng is not None)
        if self.trace_targets is not None:
            batch[F.TRACE_TARGET] = torch.from_numpy(self.trace_targets[indices])
            batch[F.TRACE_MASK] = torch.from_numpy(self.trace_masks[indices])
        batch[F.ACTION] = torch.from_numpy(np.asarray(self.arrays[F.ACTION][self.chunk_index[indices]], np.float32))
        batch[F.ACTION_IS_PAD] = torch.from_numpy(self.chunk_is_pad[indices])
        if rng is not None:
            batch = augment_batch(batch, self.augment, rng, pixel_trace_points=self.processor.trace_space == "2d")
        return batch

    def _future_traces(self, points: int) -> tuple[np.ndarray, np.ndarray]:
        """LLARVA's targets for every frame: (N, points, 2) future end-effector pixels and their mask."""
        keys = list(TRACE_TARGET_INPUTS)
        arrays = self.decoded.require(keys)
        targets, masks = [], []
        for episode in range(len(self.decoded.episode_lengths)):
            span = self.decoded.episode_slice(episode)
            target, mask = future_trace_targets(*(np.asarray(arrays[key][span]) for key in keys), points)
            targets.append(target)
            masks.append(mask)
        return np.concatenate(targets), np.concatenate(masks)
