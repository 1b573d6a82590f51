"""Action tokenizers: normalised actions <-> a few discrete tokens per step.

Two, with one interface (`fit`, `encode`, `decode`, `num_classes`, `bin_widths`, `axis_names`, buffers):
`AdaptiveActionGrid`, SpatialVLA's grid over an end effector's translation, rotation and gripper
(described below), and `PerDimensionTokenizer`, one token per action dimension over quantile bins, for
every other action (joint positions, two arms; see its docs). Which one a dataset gets is read from the
action's names (stvla.policies.action_layout).

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
# Smallest gap between edges that stays a gap once stored in float32 (its spacing near 1 is 1.2e-7).
_FLOAT32_GAP = 1e-6
# Normalised actions may overshoot [-1, 1] by float error only; more means un-normalised input.
_RANGE_TOLERANCE = 1e-4


def _int_tuple(value: object, length: int | None, name: str) -> tuple[int, ...]:
    """A tuple of `length` (any number if None) ints from a tuple, a list (JSON) or a "0,1,2" string (command line)."""
    if isinstance(value, str):
        value = [part for part in value.strip("()[] ").split(",") if part.strip()]
    items = tuple(int(v) for v in value)  # type: ignore[union-attr]
    if length is not None and len(items) != length:
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


def _axis_range(values: torch.Tensor, min_span: float = _MIN_AXIS_SPAN) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) of one axis's float64 values, a (nearly) constant axis widened to `min_span`."""
    low, high = values.min(), values.max()
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    return low, high


def _spaced_edges(inner: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(bins + 1,) strictly increasing edges: low, the `inner` edges (kept in order), high."""
    bins = len(inner) + 1
    edges = torch.cat([low.view(1), inner, high.view(1)])
    # Keep a minimal gap between edges so no bin is empty by construction: clip each edge into the
    # range that leaves room for the gaps on both sides, then a running max of (edge - k * gap)
    # makes consecutive edges at least `gap` apart without leaving [low, high].
    gap = (high - low) * _MIN_GAP_FRACTION / bins
    k = torch.arange(bins + 1, dtype=torch.float64)
    edges = torch.maximum(torch.minimum(edges, high - (bins - k) * gap), low + k * gap)
    return torch.cummax(edges - k * gap, dim=0).values + k * gap


def equal_mass_edges(values: torch.Tensor, bins: int) -> torch.Tensor:
    """(bins + 1,) strictly increasing edges of one axis: Gaussian equal-mass inner edges, data min / max outside."""
    values = values.double()
    low, high = _axis_range(values)
    mass = torch.arange(1, bins, dtype=torch.float64) / bins
    return _spaced_edges(values.mean() + values.std(unbiased=False) * torch.special.ndtri(mass), low, high)


def quantile_edges(values: torch.Tensor, bins: int) -> torch.Tensor:
    """(bins + 1,) strictly increasing edges of one axis: the data's k / bins quantiles (linear between
    order statistics) inside, its min / max outside. Repeated values make repeated quantiles: those are
    pushed apart like any colliding edges, into bins too narrow to matter."""
    ordered = values.double().flatten().sort().values
    # Wide enough that the gaps between colliding edges survive the float32 buffers.
    low, high = _axis_range(ordered, max(_MIN_AXIS_SPAN, bins * _FLOAT32_GAP / _MIN_GAP_FRACTION))
    position = torch.arange(1, bins, dtype=torch.float64) / bins * (len(ordered) - 1)
    below = position.floor().long()
    above = position.ceil().long()
    weight = position - below
    return _spaced_edges(ordered[below] * (1 - weight) + ordered[above] * weight, low, high)


def _bin_centres(values: torch.Tensor, edges: torch.Tensor, training_means: bool) -> torch.Tensor:
    """(bins,) decoding values of one axis with `edges`: the midpoints, or with `training_means` the mean of
    the training `values` that fell in each bin (the midpoint for an empty bin)."""
    bins = len(edges) - 1
    midpoints = (edges[1:] + edges[:-1]).double() / 2
    if not training_means:
        return midpoints
    index = torch.bucketize(values.float().contiguous(), edges[1:-1], right=True)
    counts = torch.bincount(index, minlength=bins).double()
    sums = torch.bincount(index, weights=values.double(), minlength=bins)
    return torch.where(counts > 0, sums / counts.clamp(min=1), midpoints)


def _training_actions(normalised_actions: torch.Tensor, tokenizer: str) -> torch.Tensor:
    """(N, D) float64 training actions for fitting `tokenizer` (named in errors), checked: some, finite, in [-1, 1]."""
    actions = torch.as_tensor(normalised_actions)
    actions = actions.reshape(-1, actions.shape[-1]).double()
    if len(actions) == 0:
        raise ValueError(f"cannot fit {tokenizer} on zero actions")
    if not torch.isfinite(actions).all():
        raise ValueError(f"cannot fit {tokenizer} on non-finite actions")
    if actions.abs().max() > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{tokenizer} is fitted on NORMALISED actions in [-1, 1], got values up to "
            f"{float(actions.abs().max()):.3g}: normalise them with ActionNormalizer first"
        )
    return actions


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


class BinnedTokenizer(nn.Module):
    """What both tokenizers share: per axis, registered buffers of bin edges and decoding centres (so a
    policy's state_dict carries them), a `fitted` flag, and the checks before encoding or decoding."""

    fitted: torch.Tensor

    def register_axes(self, bins_per_axis: dict[str, int]) -> None:
        """Zero edges and centres for every axis (filled by `fit` or `load_state_dict`), then `fitted`."""
        for axis, bins in bins_per_axis.items():
            self.register_buffer(f"{axis}_edges", torch.zeros(bins + 1, dtype=torch.float32))
            self.register_buffer(f"{axis}_centres", torch.zeros(bins, dtype=torch.float32))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def action_dim(self) -> int:
        raise NotImplementedError

    def edges(self, axis: str) -> torch.Tensor:
        """(bins + 1,) edges of one axis."""
        return getattr(self, f"{axis}_edges")

    def bin_centres(self, axis: str) -> torch.Tensor:
        """(bins,) decoding values of one axis: bin midpoints; the training mean per bin for a gripper."""
        return getattr(self, f"{axis}_centres")

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(normalised_actions) or "
                               f"load_state_dict(...) from a fitted one before encoding or decoding")

    def _check_dim(self, actions: torch.Tensor) -> None:
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"this {type(self).__name__} encodes {self.action_dim}-D actions, got shape "
                             f"{tuple(actions.shape)}")

    def checked_tokens(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{kind: LongTensor} of every token kind, each checked to lie in [0, its classes)."""
        checked = {}
        for kind, classes in self.num_classes.items():
            if kind not in tokens:
                raise KeyError(f"tokens lack the {kind!r} kind (need {list(self.num_classes)})")
            token = torch.as_tensor(tokens[kind]).long()
            if token.numel() and (token.min() < 0 or token.max() >= classes):
                raise ValueError(f"{kind} tokens must lie in [0, {classes}), got "
                                 f"[{int(token.min())}, {int(token.max())}]")
            checked[kind] = token
        return checked


class AdaptiveActionGrid(BinnedTokenizer):
    """Adaptive action grid tokenizer (see module docs); fit it, or load its buffers, before use."""

    def __init__(self, config: ActionGridConfig | None = None) -> None:
        super().__init__()
        self.config = config or ActionGridConfig()
        self.register_axes(self.config.axis_bins())

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

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
        self._check_dim(torch.as_tensor(normalised_actions))
        actions = _training_actions(normalised_actions, "an action grid")
        values = self.axis_values(actions)
        for i, (axis, bins) in enumerate(self.config.axis_bins().items()):
            self.edges(axis).copy_(equal_mass_edges(values[:, i], bins))
            self.bin_centres(axis).copy_(_bin_centres(values[:, i], self.edges(axis), training_means=axis == "gripper"))
        self.fitted.fill_(True)
        return self

    def _axis_indices(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-axis bin indices from tokens (mixed-radix digits, most significant first)."""
        bins = self.config.axis_bins()
        indices: dict[str, torch.Tensor] = {}
        for kind, remainder in self.checked_tokens(tokens).items():
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


@dataclass
class PerDimensionConfig:
    bins: int = 256  # quantile bins per action dimension (OpenVLA's 256)
    gripper_bins: int = 2  # bins of a gripper dimension (as the grid's gripper axis: open or closed)
    gripper_dims: tuple[int, ...] = ()  # action indices of grippers (found from the action's names)

    def __post_init__(self) -> None:
        self.gripper_dims = _int_tuple(self.gripper_dims, None, "gripper_dims")  # type: ignore[assignment]
        for name in ("bins", "gripper_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(set(self.gripper_dims)) != len(self.gripper_dims) or any(d < 0 for d in self.gripper_dims):
            raise ValueError(f"gripper_dims must be distinct action indices, got {self.gripper_dims}")


class PerDimensionTokenizer(BinnedTokenizer):
    """One token per action dimension over its own quantile bins (OpenVLA / FAST style): for any robot,
    joints included. Same interface as `AdaptiveActionGrid`; fit it, or load its buffers, before use.

    Token kinds are "dim0" .. "dim{D-1}" (one classification head each). Inner edges sit at the training
    values' k / bins quantiles, so every bin holds about the same share of the training actions; decoding
    returns the bin midpoint (round trip within half a bin). A gripper dimension keeps `gripper_bins`
    Gaussian equal-mass bins decoded to the mean training value of each bin, as the grid's gripper axis:
    a binary open / close command stays +-1.
    """

    def __init__(self, config: PerDimensionConfig | None = None, action_dim: int = 4) -> None:
        super().__init__()
        self.config = config or PerDimensionConfig()
        self._action_dim = action_dim
        outside = [d for d in self.config.gripper_dims if d >= action_dim]
        if outside:
            raise ValueError(f"gripper_dims {self.config.gripper_dims} lie outside a {action_dim}-D action")
        self.register_axes(self.num_classes)

    @property
    def action_dim(self) -> int:
        return self._action_dim

    @property
    def axis_names(self) -> tuple[str, ...]:
        """One axis (and token kind) per action dimension, in action order: dim0, dim1, ..."""
        return tuple(f"dim{d}" for d in range(self.action_dim))

    @property
    def num_classes(self) -> dict[str, int]:
        """Classes per token kind (per dimension)."""
        return {axis: self.config.gripper_bins if d in self.config.gripper_dims else self.config.bins
                for d, axis in enumerate(self.axis_names)}

    def axis_values(self, normalised_actions: torch.Tensor) -> torch.Tensor:
        """(..., D) normalised actions -> their values on the axes (order: `axis_names`): the actions themselves."""
        self._check_dim(normalised_actions)
        return normalised_actions

    @torch.no_grad()
    def fit(self, normalised_actions: torch.Tensor) -> PerDimensionTokenizer:
        """Fit every dimension's edges to (N, D) (or (..., D)) actions normalised to [-1, 1]; returns self."""
        self._check_dim(torch.as_tensor(normalised_actions))
        actions = _training_actions(normalised_actions, "per-dimension bins")
        for d, (axis, bins) in enumerate(self.num_classes.items()):
            gripper = d in self.config.gripper_dims
            self.edges(axis).copy_((equal_mass_edges if gripper else quantile_edges)(actions[:, d], bins))
            self.bin_centres(axis).copy_(_bin_centres(actions[:, d], self.edges(axis), training_means=gripper))
        self.fitted.fill_(True)
        return self

    def _indices(self, tokens: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-dimension bin indices from tokens, checked against each kind's classes."""
        return list(self.checked_tokens(tokens).values())

    def encode(self, normalised_actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., D) normalised actions -> {"dim<d>": LongTensor (...)}; out-of-range values go to the end bins."""
        self._check_fitted()
        self._check_dim(normalised_actions)
        values = normalised_actions.to(self.fitted.device, torch.float32)
        # Bin i covers [edge_i, edge_i+1): its index is the number of inner edges <= the value.
        return {axis: torch.bucketize(values[..., d].contiguous(), self.edges(axis)[1:-1], right=True)
                for d, axis in enumerate(self.axis_names)}

    def decode(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """{"dim<d>": LongTensor (...)} -> (..., D) normalised actions at the bin centres, clipped to [-1, 1]."""
        self._check_fitted()
        values = [self.bin_centres(axis)[index] for axis, index in zip(self.axis_names, self._indices(tokens))]
        return torch.stack(values, dim=-1).clamp(-1.0, 1.0)

    def bin_widths(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """{"dim<d>": LongTensor (...)} -> (..., D) width of each token's bin."""
        self._check_fitted()
        return torch.stack([torch.diff(self.edges(axis))[index]
                            for axis, index in zip(self.axis_names, self._indices(tokens))], dim=-1)
