"""SpatialVLA's adaptive action grids: normalised actions <-> a few discrete tokens per step.

Works on actions already normalised to [-1, 1] (see `stvla.policies.normalizer.ActionNormalizer`).

- Translation (x, y, z) becomes spherical: r = |xyz|, theta = arccos(z / r) in [0, pi] (polar angle),
  phi = atan2(y, x) in (-pi, pi]. One token over theta x phi x r bins (16 x 32 x 8 = 4096 classes):
  token = (theta_idx * phi_bins + phi_idx) * r_bins + r_idx.
- Gripper: one token over `gripper_bins` bins of its own axis.
- Rotation (only when the robot has one; Meta-World's 4-D action does not): one token over
  roll x pitch x yaw bins, token = (roll_idx * n + pitch_idx) * n + yaw_idx.

Bin edges are adaptive: per axis, a Gaussian (mean, std) is fitted to the training values and the
inner edges sit at equal probability mass, mu + sigma * Phi^-1(k / n) for k = 1..n-1. They are then
clipped into the observed range [min, max] of the axis and kept strictly increasing; the outer edges
are that min and max, so every bin has a finite width. Decoding returns each bin's centre: the
midpoint of its edges (so the round-trip error is at most half a bin), except on the gripper axis,
where it is the mean of the training values that fell in the bin: a gripper is open or closed, and
midpoints would turn a binary +-1 command into +-0.5 and weaken every grasp. Decoded translations
go back to xyz and everything is clipped to [-1, 1].

All edges are registered buffers, so a policy's state_dict carries its grid: build the grid from its
config (zero edges), then `fit(normalised_actions)` or `load_state_dict(...)`.

On a new robot SpatialVLA re-fits the Gaussians and interpolates the old token embeddings onto the new
grid: `new_grid.interpolate_from(old_grid, old_embeddings)` does that by (tri)linear interpolation
between bin centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# Token digit order within each token kind, most significant first.
TRANSLATION_AXES = ("theta", "phi", "r")
ROTATION_AXES = ("roll", "pitch", "yaw")
# A constant axis is widened to this span so its bins still have a finite, non-zero width.
_MIN_AXIS_SPAN = 1e-4
# Edges that collide after clipping are pushed apart by this fraction of the axis span per bin.
_MIN_GAP_FRACTION = 1e-3
# Normalised actions may overshoot [-1, 1] by float error only; more means un-normalised input.
_RANGE_TOLERANCE = 1e-4


def _int_tuple(value: object, length: int, name: str) -> tuple[int, ...]:
    """A tuple of `length` ints from a tuple, a list (JSON) or a "0,1,2" string (command line)."""
    if isinstance(value, str):
        value = [part for part in value.strip("()[] ").split(",") if part.strip()]
    items = tuple(int(v) for v in value)  # type: ignore[union-attr]
    if len(items) != length:
        raise ValueError(f"{name} needs {length} indices, got {items}")
    return items


@dataclass
class ActionGridConfig:
    theta_bins: int = 16  # polar-angle bins of the translation direction
    phi_bins: int = 32  # azimuth bins of the translation direction
    r_bins: int = 8  # bins of the translation length
    gripper_bins: int = 2  # bins of the gripper axis (SpatialVLA: 2, open or closed)
    rotation_bins: int = 16  # bins per roll / pitch / yaw axis; used only when has_rotation
    has_rotation: bool = False  # the action carries a rotation (roll, pitch, yaw) besides translation and gripper
    translation_dims: tuple[int, int, int] = (0, 1, 2)  # action indices of x, y, z
    gripper_dim: int = 3  # action index of the gripper
    rotation_dims: tuple[int, int, int] = (3, 4, 5)  # action indices of roll, pitch, yaw; used only when has_rotation

    def __post_init__(self) -> None:
        self.translation_dims = _int_tuple(self.translation_dims, 3, "translation_dims")  # type: ignore[assignment]
        self.rotation_dims = _int_tuple(self.rotation_dims, 3, "rotation_dims")  # type: ignore[assignment]
        for name, bins in self.axis_bins().items():
            if bins < 1:
                raise ValueError(f"the {name} axis needs at least one bin, got {bins}")
        used = self.used_dims()
        if sorted(used) != list(range(len(used))):
            raise ValueError(
                f"the translation, gripper{' and rotation' if self.has_rotation else ''} dims must be distinct "
                f"and cover 0..D-1 exactly, got {used}"
            )

    def used_dims(self) -> tuple[int, ...]:
        """Every action index the grid reads, translation first."""
        rotation = self.rotation_dims if self.has_rotation else ()
        return (*self.translation_dims, self.gripper_dim, *rotation)

    @property
    def action_dim(self) -> int:
        return len(self.used_dims())

    def axis_bins(self) -> dict[str, int]:
        """Bins per grid axis, in the order of `AdaptiveActionGrid.axis_values`."""
        bins = {"r": self.r_bins, "theta": self.theta_bins, "phi": self.phi_bins, "gripper": self.gripper_bins}
        if self.has_rotation:
            bins.update({axis: self.rotation_bins for axis in ROTATION_AXES})
        return bins

    def token_axes(self) -> dict[str, tuple[str, ...]]:
        """The grid axes each token kind combines, most significant digit first."""
        kinds: dict[str, tuple[str, ...]] = {"translation": TRANSLATION_AXES, "gripper": ("gripper",)}
        if self.has_rotation:
            kinds["rotation"] = ROTATION_AXES
        return kinds


def equal_mass_edges(values: torch.Tensor, bins: int) -> torch.Tensor:
    """(bins + 1,) strictly increasing edges of one axis: Gaussian equal-mass inner edges, data min / max outside."""
    values = values.double()
    low, high = values.min(), values.max()
    if high - low < _MIN_AXIS_SPAN:
        middle = (low + high) / 2
        low, high = middle - _MIN_AXIS_SPAN / 2, middle + _MIN_AXIS_SPAN / 2
    mass = torch.arange(1, bins, dtype=torch.float64) / bins
    inner = values.mean() + values.std(unbiased=False) * torch.special.ndtri(mass)
    edges = torch.cat([low.view(1), inner, high.view(1)])
    # Keep a minimal gap between edges so no bin is empty by construction: clip each edge into the
    # range that leaves room for the gaps on both sides, then a running max of (edge - k * gap)
    # makes consecutive edges at least `gap` apart without leaving [low, high].
    gap = (high - low) * _MIN_GAP_FRACTION / bins
    k = torch.arange(bins + 1, dtype=torch.float64)
    edges = torch.maximum(torch.minimum(edges, high - (bins - k) * gap), low + k * gap)
    return torch.cummax(edges - k * gap, dim=0).values + k * gap


def _interpolation_weights(query: torch.Tensor, knots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear interpolation of `query` between increasing `knots`: (lower index, upper index, weight of upper).

    Queries outside the knots take the nearest end knot (no extrapolation).
    """
    if len(knots) == 1:
        zeros = torch.zeros(len(query), dtype=torch.long, device=query.device)
        return zeros, zeros, torch.zeros(len(query), dtype=knots.dtype, device=query.device)
    upper = torch.searchsorted(knots, query).clamp(1, len(knots) - 1)
    lower = upper - 1
    weight = ((query - knots[lower]) / (knots[upper] - knots[lower])).clamp(0.0, 1.0)
    return lower, upper, weight


class AdaptiveActionGrid(nn.Module):
    """Adaptive action grid tokenizer (see module docs); fit it, or load its buffers, before use."""

    fitted: torch.Tensor

    def __init__(self, config: ActionGridConfig | None = None) -> None:
        super().__init__()
        self.config = config or ActionGridConfig()
        for axis, bins in self.config.axis_bins().items():
            self.register_buffer(f"{axis}_edges", torch.zeros(bins + 1, dtype=torch.float32))
            self.register_buffer(f"{axis}_centres", torch.zeros(bins, dtype=torch.float32))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # --- layout ----------------------------------------------------------------------------------------
    @property
    def axis_names(self) -> tuple[str, ...]:
        """Grid axes in the order of `axis_values` and `bin_widths`: r, theta, phi, gripper (, roll, pitch, yaw)."""
        return tuple(self.config.axis_bins())

    @property
    def num_classes(self) -> dict[str, int]:
        """Classes per token kind: translation, gripper (and rotation)."""
        bins = self.config.axis_bins()
        return {kind: math.prod(bins[a] for a in axes) for kind, axes in self.config.token_axes().items()}

    def edges(self, axis: str) -> torch.Tensor:
        """(bins + 1,) edges of one grid axis."""
        return getattr(self, f"{axis}_edges")

    def bin_centres(self, axis: str) -> torch.Tensor:
        """(bins,) decoding values of one grid axis: bin midpoints; the training mean per bin for the gripper."""
        return getattr(self, f"{axis}_centres")

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(
                "AdaptiveActionGrid is not fitted: call fit(normalised_actions) or load_state_dict(...) "
                "from a fitted grid before encoding or decoding"
            )

    def _check_dim(self, actions: torch.Tensor) -> None:
        if actions.shape[-1] != self.config.action_dim:
            raise ValueError(f"this grid encodes {self.config.action_dim}-D actions, got shape {tuple(actions.shape)}")

    # --- grid space ------------------------------------------------------------------------------------
    def axis_values(self, normalised_actions: torch.Tensor) -> torch.Tensor:
        """(..., D) normalised actions -> (..., n_axes) values on the grid axes (order: `axis_names`)."""
        self._check_dim(normalised_actions)
        xyz = normalised_actions[..., list(self.config.translation_dims)]
        x, y, z = xyz.unbind(-1)
        # atan2 form of arccos(z / r): same value for r > 0, well defined (0) at the origin.
        theta = torch.atan2(torch.hypot(x, y), z)
        phi = torch.atan2(y, x)
        phi = torch.where(phi <= -math.pi, phi + 2 * math.pi, phi)  # atan2(-0.0, -1) = -pi; keep (-pi, pi]
        values = {"r": xyz.norm(dim=-1), "theta": theta, "phi": phi,
                  "gripper": normalised_actions[..., self.config.gripper_dim]}
        if self.config.has_rotation:
            values.update({a: normalised_actions[..., d] for a, d in zip(ROTATION_AXES, self.config.rotation_dims)})
        return torch.stack([values[axis] for axis in self.axis_names], dim=-1)

    @torch.no_grad()
    def fit(self, normalised_actions: torch.Tensor) -> AdaptiveActionGrid:
        """Fit every axis's edges to (N, D) (or (..., D)) actions normalised to [-1, 1]; returns self."""
        actions = torch.as_tensor(normalised_actions).reshape(-1, normalised_actions.shape[-1]).double()
        self._check_dim(actions)
        if len(actions) == 0:
            raise ValueError("cannot fit an action grid on zero actions")
        if not torch.isfinite(actions).all():
            raise ValueError("cannot fit an action grid on non-finite actions")
        if actions.abs().max() > 1.0 + _RANGE_TOLERANCE:
            raise ValueError(
                f"the action grid is fitted on NORMALISED actions in [-1, 1], got values up to "
                f"{float(actions.abs().max()):.3g}: normalise them with ActionNormalizer first"
            )
        values = self.axis_values(actions)
        for i, (axis, bins) in enumerate(self.config.axis_bins().items()):
            edges = equal_mass_edges(values[:, i], bins)
            self.edges(axis).copy_(edges)
            index = torch.bucketize(values[:, i].float().contiguous(), self.edges(axis)[1:-1], right=True)
            counts = torch.bincount(index, minlength=bins).double()
            sums = torch.bincount(index, weights=values[:, i], minlength=bins)
            midpoints = (self.edges(axis)[1:] + self.edges(axis)[:-1]).double() / 2
            means = torch.where(counts > 0, sums / counts.clamp(min=1), midpoints)
            self.bin_centres(axis).copy_(means if axis == "gripper" else midpoints)
        self.fitted.fill_(True)
        return self

    def _axis_indices(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-axis bin indices from tokens (mixed-radix digits, most significant first)."""
        bins = self.config.axis_bins()
        indices: dict[str, torch.Tensor] = {}
        for kind, classes in self.num_classes.items():
            if kind not in tokens:
                raise KeyError(f"tokens lack the {kind!r} kind (need {sorted(self.num_classes)})")
            remainder = torch.as_tensor(tokens[kind]).long()
            if remainder.numel() and (remainder.min() < 0 or remainder.max() >= classes):
                raise ValueError(f"{kind} tokens must lie in [0, {classes}), got "
                                 f"[{int(remainder.min())}, {int(remainder.max())}]")
            for axis in reversed(self.config.token_axes()[kind]):
                indices[axis] = remainder % bins[axis]
                remainder = remainder // bins[axis]
        return indices

    # --- tokens ----------------------------------------------------------------------------------------
    def encode(self, normalised_actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., D) normalised actions -> {kind: LongTensor (...)}; out-of-range values go to the end bins."""
        self._check_fitted()
        values = self.axis_values(normalised_actions).to(self.fitted.device, torch.float32)
        bins = self.config.axis_bins()
        # Bin i covers [edge_i, edge_i+1): its index is the number of inner edges <= the value.
        indices = {axis: torch.bucketize(values[..., i].contiguous(), self.edges(axis)[1:-1], right=True)
                   for i, axis in enumerate(self.axis_names)}
        tokens = {}
        for kind, axes in self.config.token_axes().items():
            token = torch.zeros_like(indices[axes[0]])
            for axis in axes:
                token = token * bins[axis] + indices[axis]
            tokens[kind] = token
        return tokens

    def decode(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """{kind: LongTensor (...)} -> (..., D) normalised actions at the bin centres, clipped to [-1, 1]."""
        self._check_fitted()
        value = {axis: self.bin_centres(axis)[index] for axis, index in self._axis_indices(tokens).items()}
        r, theta, phi = value["r"], value["theta"], value["phi"]
        parts = {
            self.config.translation_dims[0]: r * torch.sin(theta) * torch.cos(phi),
            self.config.translation_dims[1]: r * torch.sin(theta) * torch.sin(phi),
            self.config.translation_dims[2]: r * torch.cos(theta),
            self.config.gripper_dim: value["gripper"],
        }
        if self.config.has_rotation:
            parts.update({d: value[a] for a, d in zip(ROTATION_AXES, self.config.rotation_dims)})
        return torch.stack([parts[d] for d in range(self.config.action_dim)], dim=-1).clamp(-1.0, 1.0)

    def bin_widths(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """{kind: LongTensor (...)} -> (..., n_axes) width of each token's bin on every grid axis."""
        self._check_fitted()
        indices = self._axis_indices(tokens)
        return torch.stack([torch.diff(self.edges(axis))[indices[axis]] for axis in self.axis_names], dim=-1)

    # --- transfer to a new robot ------------------------------------------------------------------------
    def interpolate_from(self, other: AdaptiveActionGrid, embedding: torch.Tensor,
                         kind: str = "translation") -> torch.Tensor:
        """Embeddings of this grid's `kind` classes, interpolated from `other` grid's class embeddings.

        `embedding` is (other classes, E) (or (other classes,), e.g. a head's bias), ordered like
        `other`'s tokens. Each class is a point of its axes' bin centres (theta, phi, r for translation);
        the result is the separable (tri)linear interpolation of `other`'s embeddings at this grid's
        centres, one axis at a time. Centres beyond `other`'s outermost centres take the end value
        (phi is not wrapped around at +-pi: the simple, documented choice). Returns (this classes, E).
        """
        self._check_fitted()
        other._check_fitted()
        if kind not in self.num_classes or kind not in other.num_classes:
            raise KeyError(f"both grids need token kind {kind!r}")
        flat = embedding.unsqueeze(-1) if embedding.dim() == 1 else embedding
        if flat.dim() != 2 or len(flat) != other.num_classes[kind]:
            raise ValueError(f"embedding must be ({other.num_classes[kind]}, E) for the other grid's {kind} "
                             f"classes, got {tuple(embedding.shape)}")
        axes = self.config.token_axes()[kind]
        grid = flat.reshape(*(other.config.axis_bins()[a] for a in axes), flat.shape[-1])
        for dim, axis in enumerate(axes):
            lower, upper, weight = _interpolation_weights(
                self.bin_centres(axis).double().cpu(), other.bin_centres(axis).double().cpu())
            shape = [1] * grid.dim()
            shape[dim] = -1
            weight = weight.to(grid.device, grid.dtype).view(shape)
            lower, upper = lower.to(grid.device), upper.to(grid.device)
            grid = grid.index_select(dim, lower) * (1 - weight) + grid.index_select(dim, upper) * weight
        result = grid.reshape(-1, flat.shape[-1])
        return result.squeeze(-1) if embedding.dim() == 1 else result
