"""Action and proprio normalisers that live inside a policy, so they are saved with its weights.

`ActionNormalizer` follows SpatialVLA: per dimension, the 1st and 99th percentiles of the training
actions are mapped to -1 and 1 (and everything is clamped to [-1, 1]), which makes the action grids of
`stvla.policies.action_tokenizer` robot-independent. `StateNormalizer` standardises proprio (mean / std).

Both keep their statistics in registered buffers: build one with the dimension only (zero buffers) and
`load_state_dict` restores a fitted one; the classmethod `fit(data)` builds a fitted one from data, and
`fit_(data)` refits one in place (for a normaliser already owned by a model). Using an unfitted
normaliser raises, because zero statistics would silently map every input to a constant.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stvla.features import MAX_MAGNITUDE

ArrayLike = np.ndarray | torch.Tensor

# Below this span a dimension counts as constant; it is then mapped to 0 (and back to `low`).
_MIN_SPAN = 1e-8
# Proprio std floor: a constant state dimension must not blow up to +-inf after normalisation.
_MIN_STD = 1e-6


def _as_2d_float64(values: ArrayLike, dim: int | None = None) -> np.ndarray:
    """(N, D) float64 numpy copy of `values` (any leading shape is flattened into N)."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = array.astype(np.float64).reshape(-1, array.shape[-1])
    if array.shape[0] == 0:
        raise ValueError("cannot fit a normaliser on zero samples")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"expected {dim} dimensions, got {array.shape[1]}")
    if not np.isfinite(array).all():
        raise ValueError("cannot fit a normaliser on non-finite values")
    if np.abs(array).max() > MAX_MAGNITUDE:
        raise ValueError(f"cannot fit a normaliser on values beyond +-{MAX_MAGNITUDE:g} (got {np.abs(array).max():.3g})")
    return array


class FittedNormalizer(nn.Module):
    """Holds the `fitted` flag as a buffer, so a loaded state_dict carries it too."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: build it with {type(self).__name__}.fit(data), "
                "refit it with .fit_(data), or load_state_dict(...) from a fitted one before using it"
            )

    def check_loaded(self, where: str) -> None:
        """Refuse, in one line naming `where` (the weights file and this module's name), a loaded fitted state
        that cannot map values (values no fit gives). An unfitted one loads as saved: acting refuses it."""
        if not bool(self.fitted):
            return
        for name, values in self.named_buffers():
            if name != "fitted" and not bool((values.abs() <= MAX_MAGNITUDE).all()):  # NaN fails it too
                i = int(torch.nonzero(~(values.abs() <= MAX_MAGNITUDE)).flatten()[0])
                raise ValueError(f"{where}.{name} is {float(values.reshape(-1)[i]):.4g} at dimension {i}: no fit "
                                 f"gives a value beyond +-{MAX_MAGNITUDE:g}")
        self._check_fitted_values(where)

    def _check_fitted_values(self, where: str) -> None:
        raise NotImplementedError


class ActionNormalizer(FittedNormalizer):
    """Maps each action dimension's [1st, 99th] percentile range to [-1, 1] and back."""

    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.register_buffer("low", torch.zeros(dim, dtype=torch.float32))
        self.register_buffer("high", torch.zeros(dim, dtype=torch.float32))

    @classmethod
    def fit(cls, actions: ArrayLike, low_percentile: float = 1.0, high_percentile: float = 99.0) -> ActionNormalizer:
        """Normaliser fitted on (N, D) actions; the percentiles default to SpatialVLA's 1 / 99."""
        return cls(_as_2d_float64(actions).shape[1]).fit_(actions, low_percentile, high_percentile)

    @torch.no_grad()
    def fit_(self, actions: ArrayLike, low_percentile: float = 1.0, high_percentile: float = 99.0) -> ActionNormalizer:
        """Refit this normaliser in place on (N, D) actions; returns self."""
        if not 0.0 <= low_percentile < high_percentile <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got {low_percentile}, {high_percentile}")
        array = _as_2d_float64(actions, self.dim)
        self.low.copy_(torch.from_numpy(np.percentile(array, low_percentile, axis=0)))
        self.high.copy_(torch.from_numpy(np.percentile(array, high_percentile, axis=0)))
        self.fitted.fill_(True)
        return self

    def _check_fitted_values(self, where: str) -> None:
        below = torch.nonzero(self.high < self.low).flatten()
        if len(below):
            i = int(below[0])
            raise ValueError(f"{where}.high is below .low at action dimension {i} ({float(self.high[i]):.4g} < "
                             f"{float(self.low[i]):.4g}): no fit gives that")

    def _span(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(span, constant mask); the span of a constant dimension is replaced by 1 to avoid 0 / 0."""
        span = self.high - self.low
        constant = span <= _MIN_SPAN
        return torch.where(constant, torch.ones_like(span), span), constant

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions (..., D) -> (..., D) in [-1, 1]; constant dimensions map to 0."""
        self._check_fitted()
        span, constant = self._span()
        scaled = 2.0 * (actions - self.low) / span - 1.0
        return torch.where(constant, torch.zeros_like(scaled), scaled).clamp(-1.0, 1.0)

    def unnormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`: (..., D) in [-1, 1] -> actions; constant dimensions return `low`.

        The input is clamped to [-1, 1] first (as SpatialVLA does), so a prediction can never command
        more than the training range.
        """
        self._check_fitted()
        span, constant = self._span()
        actions = self.low + (normalized.clamp(-1.0, 1.0) + 1.0) * 0.5 * span
        return torch.where(constant, self.low.expand_as(actions), actions)


class StateNormalizer(FittedNormalizer):
    """Standardises proprio: (x - mean) / std per dimension, std floored at 1e-6."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float32))
        self.register_buffer("std", torch.zeros(dim, dtype=torch.float32))

    @classmethod
    def fit(cls, states: ArrayLike) -> StateNormalizer:
        """Normaliser fitted on (N, D) proprio states."""
        return cls(_as_2d_float64(states).shape[1]).fit_(states)

    @torch.no_grad()
    def fit_(self, states: ArrayLike) -> StateNormalizer:
        """Refit this normaliser in place on (N, D) proprio states; returns self."""
        array = _as_2d_float64(states, self.dim)
        self.mean.copy_(torch.from_numpy(array.mean(axis=0)))
        self.std.copy_(torch.from_numpy(np.maximum(array.std(axis=0), _MIN_STD)))
        self.fitted.fill_(True)
        return self

    def _check_fitted_values(self, where: str) -> None:
        small = torch.nonzero(~(self.std >= _MIN_STD)).flatten()
        if len(small):
            i = int(small[0])
            raise ValueError(f"{where}.std is {float(self.std[i]):.4g} at state dimension {i}: a fitted standard "
                             f"deviation is at least {_MIN_STD}")

    def normalize(self, states: torch.Tensor) -> torch.Tensor:
        """States (..., D) -> standardised (..., D)."""
        self._check_fitted()
        return (states - self.mean) / self.std

    def unnormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`."""
        self._check_fitted()
        return normalized * self.std + self.mean
