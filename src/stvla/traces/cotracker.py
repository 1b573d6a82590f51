"""CoTracker3 (online) behind the `PointTracker` interface: Meta's learned point tracker, one update per frame.

    tracker = CoTrackerOnline(CoTrackerConfig(checkpoint="/models/scaled_online.pth"), TrackerConfig(num_points=400))
    for rgb in frames:
        state = tracker.update(rgb)      # TrackState: positions (T, N, 2), visible (T, N), age (N,)

The network is a re-implementation of CoTracker3's online model (facebookresearch/co-tracker,
cotracker3_online.py): a stride-4 CNN encoder (`fnet`), correlation features between a (2r+1)^2 patch
around each query point and a (2r+1)^2 neighbourhood around its current estimate at every level of a
feature pyramid (`corr_mlp` embeds each 4-D correlation volume), and the `updateformer` transformer
(attention over time per track, attention across tracks through a few learned virtual tracks), which
refines coordinates, visibility and confidence over a few iterations. Parameter and buffer names follow
the official code so that the released `scaled_online.pth` loads with `load_state_dict(strict=True)`;
the weights come from a local file only, nothing is downloaded.

Query points are fixed at the first frame after `reset()`: the given points, then the cells of a regular
grid (TrackerConfig.num_points in all). CoTracker follows points through occlusion, so a slot is never
re-seeded: a point that is occluded or outside the image is reported as not visible and keeps its
estimated position; every slot's age is the number of frames since reset.

Per-frame scheme. The official online mode moves a window of `window_len` frames by `window_len // 2`
frames at a time. Here every `update(frame)` encodes the new frame once (its feature pyramid is cached for
the window) and, every `update_every` frames (default 1: every frame), runs the model on the last
`window_len` frames (fewer at the start, padded with the newest frame as the official code pads). Frames
the window has seen before start from their previous estimates and new frames from the newest estimate,
as in the official overlap hand-over. With `update_every = window_len // 2` this is the official cadence;
frames in between report the latest estimate held still until the next run revises them. A run revises
every frame in its window, so the last `window_len` entries of the buffer may still change; older entries
are final. The query frame is reported at the query points exactly (the query defines the track there).
Visibility is the official online rule: sigmoid(visibility) * sigmoid(confidence) > 0.6, and inside the image.

Cost per update: one encoder pass on one frame at model resolution, plus, when the model runs,
`iterations` x (correlation sampling for window_len x N points x corr_levels, the correlation MLP on
those volumes, and the transformer over window_len x (N + num_virtual_tracks) tokens). It depends on
window_len and N, never on buffer_length: older frames are neither stored as images nor re-processed.
`flow_calls` counts model runs. Running at every frame costs about window_len // 2 times the official
online transformer work per frame, in exchange for an up-to-date estimate of the newest frame; the model
was trained with the half-window step, so frames seen many times are a mild shift from its training.

Unlike the rest of stvla.traces this module imports torch at the top; `stvla.traces.__init__` does not
import it, so the numpy/OpenCV trackers stay usable without torch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stvla.traces.cotracker_config import CoTrackerConfig
from stvla.traces.tracker import (
    PointTracker,
    RingBuffer,
    TrackerConfig,
    TrackState,
    checked_seed_points,
    grid_cell_centres,
    grid_shape,
    inside_image,
)

# How many missing / unexpected / mismatched names a loading error lists.
SHOWN_KEYS = 8


# --- network (module names follow the official state dict) ---------------------------------------------
class Mlp(nn.Module):
    """Linear -> GELU -> Linear (`fc1`, `fc2` as in the checkpoint)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, gelu_approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.gelu_approximate = gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.gelu_approximate))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm (no learned affine) and a strided 1x1 shortcut when downsampling."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride),
                                            nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(F.instance_norm(self.conv1(x)))
        y = F.relu(F.instance_norm(self.conv2(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


class FeatureEncoder(nn.Module):
    """CoTracker's BasicEncoder: four residual stages at 1/2..1/16 scale, fused at 1/stride into latent_dim channels."""

    def __init__(self, latent_dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        widths = (latent_dim // 2, latent_dim // 4 * 3, latent_dim, latent_dim)
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3)
        in_channels = widths[0]
        for index, (width, stage_stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
            stage = nn.Sequential(ResidualBlock(in_channels, width, stage_stride), ResidualBlock(width, width, 1))
            setattr(self, f"layer{index}", stage)
            in_channels = width
        self.conv2 = nn.Conv2d(sum(widths), latent_dim * 2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(latent_dim * 2, latent_dim, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) in [-1, 1] -> (T, latent_dim, H / stride, W / stride)."""
        height, width = images.shape[-2:]
        x = F.relu(F.instance_norm(self.conv1(images)))
        stages = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            stages.append(x)
        size = (height // self.stride, width // self.stride)
        fused = torch.cat([F.interpolate(s, size, mode="bilinear", align_corners=True) for s in stages], dim=1)
        return self.conv3(F.relu(F.instance_norm(self.conv2(fused))))


class Attention(nn.Module):
    """Multi-head attention with separate query and key/value projections (`to_q`, `to_kv`, `to_out`)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, dim * 2)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        batch, length, dim = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, t.shape[1], self.heads, dim // self.heads).transpose(1, 2)

        keys, values = self.to_kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(split_heads(self.to_q(x)), split_heads(keys), split_heads(values))
        return self.to_out(out.transpose(1, 2).reshape(batch, length, dim))


def plain_layer_norm(x: torch.Tensor) -> torch.Tensor:
    # The official blocks normalise without a learned affine (so nothing of it is in the checkpoint).
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block: self-attention then a tanh-GELU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, gelu_approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(plain_layer_norm(x))
        return x + self.mlp(plain_layer_norm(x))


class CrossAttentionBlock(nn.Module):
    """Pre-norm block attending from `x` to `context` (the context norm has a learned affine)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, gelu_approximate="tanh")

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(plain_layer_norm(x), self.norm_context(context))
        return x + self.mlp(plain_layer_norm(x))


class UpdateTransformer(nn.Module):
    """CoTracker's EfficientUpdateFormer: (B, N, T, D) tokens -> (B, N, T, 4) updates (du, dv, dvis, dconf)."""

    def __init__(self, config: CoTrackerConfig) -> None:
        super().__init__()
        dim, heads, ratio = config.hidden_size, config.num_heads, config.mlp_ratio
        self.input_transform = nn.Linear(config.transformer_input_dim, dim)
        self.flow_head = nn.Linear(dim, 2)
        self.vis_conf_head = nn.Linear(dim, 2)
        # (sic) the official attribute name, misspelt there; the checkpoint key depends on it.
        self.virual_tracks = nn.Parameter(torch.randn(1, config.num_virtual_tracks, 1, dim))
        self.time_blocks = nn.ModuleList([SelfAttentionBlock(dim, heads, ratio) for _ in range(config.time_depth)])
        self.space_virtual_blocks = nn.ModuleList(
            [SelfAttentionBlock(dim, heads, ratio) for _ in range(config.space_depth)])
        self.space_point2virtual_blocks = nn.ModuleList(
            [CrossAttentionBlock(dim, heads, ratio) for _ in range(config.space_depth)])
        self.space_virtual2point_blocks = nn.ModuleList(
            [CrossAttentionBlock(dim, heads, ratio) for _ in range(config.space_depth)])
        self.space_every = config.time_depth // config.space_depth
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Small output heads: an untrained model makes small updates, as the official initialisation does.
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)
        nn.init.trunc_normal_(self.vis_conf_head.weight, std=0.001)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.input_transform(tokens)
        batch, num_points, frames, dim = tokens.shape
        tokens = torch.cat([tokens, self.virual_tracks.expand(batch, -1, frames, -1)], dim=1)
        total = tokens.shape[1]
        space_index = 0
        for index, time_block in enumerate(self.time_blocks):
            tokens = time_block(tokens.reshape(batch * total, frames, dim)).reshape(batch, total, frames, dim)
            if index % self.space_every == 0:
                across = tokens.transpose(1, 2).reshape(batch * frames, total, dim)
                points, virtual = across[:, :num_points], across[:, num_points:]
                virtual = self.space_virtual2point_blocks[space_index](virtual, points)
                virtual = self.space_virtual_blocks[space_index](virtual)
                points = self.space_point2virtual_blocks[space_index](points, virtual)
                across = torch.cat([points, virtual], dim=1)
                tokens = across.reshape(batch, frames, total, dim).transpose(1, 2)
                space_index += 1
        points = tokens[:, :num_points]
        return torch.cat([self.flow_head(points), self.vis_conf_head(points)], dim=-1)


def sincos_time_embedding(dim: int, length: int) -> torch.Tensor:
    """(1, length, dim) sinusoidal embedding of frame indices 0..length-1: sines, then cosines."""
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * frequencies[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)[None].float()


def motion_encoding(x: torch.Tensor, frequencies: int) -> torch.Tensor:
    """x concatenated with sin(2^k x) and cos(2^k x), k = 0..frequencies-1 (scale-major, as CoTracker3's posenc)."""
    scales = 2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device)
    scaled = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(torch.cat([scaled, scaled + 0.5 * math.pi], dim=-1))], dim=-1)


def sample_patches(feature_maps: torch.Tensor, centres: torch.Tensor, radius: int) -> torch.Tensor:
    """Bilinear (2r+1)^2 patches around points: (T, C, h, w) maps, (T, N, 2) centres (x, y) -> (T, N, R, R, C).

    Patch cell [i, j] lies at offset (x + i - r, y + j - r): the first patch axis is x. That is the
    official layout, and the trained correlation MLP depends on the order of the flattened volume.
    Coordinates are in feature cells with corners aligned (cell centres at integers), borders replicated.
    """
    frames, channels, height, width = feature_maps.shape
    side = 2 * radius + 1
    offsets = torch.arange(-radius, radius + 1, dtype=centres.dtype, device=centres.device)
    offset_grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)  # [i, j] = (o_i, o_j)
    points = centres[:, :, None, None, :] + offset_grid
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=centres.dtype,
                         device=centres.device)
    grid = (points * scale - 1.0).reshape(frames, -1, side, 2)
    samples = F.grid_sample(feature_maps, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return samples.reshape(frames, channels, -1, side, side).permute(0, 2, 3, 4, 1)


class CoTrackerThreeOnlineNet(nn.Module):
    """CoTracker3 online: encoder, correlation MLP and update transformer, named as the official `CoTrackerThreeOnline`.

    Works on one video (no batch axis); coordinates are (x, y) in feature cells (model pixels / stride).
    """

    def __init__(self, config: CoTrackerConfig) -> None:
        super().__init__()
        self.config = config
        self.fnet = FeatureEncoder(config.latent_dim, config.model_stride)
        self.updateformer = UpdateTransformer(config)
        self.corr_mlp = Mlp((2 * config.corr_radius + 1) ** 4, config.corr_hidden_dim, config.corr_embed_dim)
        self.register_buffer("time_emb", sincos_time_embedding(config.transformer_input_dim, config.window_len))

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(T, 3, H, W) in [-1, 1] at model resolution -> feature pyramid, level l: (T, C, h / 2^l, w / 2^l)."""
        features = self.fnet(images)
        # Unit-length features: the correlations are then cosine similarities.
        features = features / torch.sqrt(features.square().sum(dim=1, keepdim=True).clamp_min(1e-12))
        pyramid = [features]
        for _ in range(self.config.corr_levels - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))
        return pyramid

    def query_patches(self, pyramid: list[torch.Tensor], queries: torch.Tensor) -> list[torch.Tensor]:
        """Per level, the (N, R, R, C) feature patch around each query of a one-frame pyramid ((1, C, h, w) maps)."""
        radius = self.config.corr_radius
        return [sample_patches(level, queries[None] / 2**index, radius)[0] for index, level in enumerate(pyramid)]

    def refine(self, pyramid: list[torch.Tensor], query_patches: list[torch.Tensor], coords: torch.Tensor,
               vis: torch.Tensor, conf: torch.Tensor, iterations: int) -> tuple[torch.Tensor, ...]:
        """Iteratively update (S, N, 2) coords and (S, N) visibility / confidence logits over a window of S frames."""
        cfg = self.config
        frames, num_points = coords.shape[:2]
        side = 2 * cfg.corr_radius + 1
        motion_scale = coords.new_tensor([cfg.model_resolution[1], cfg.model_resolution[0]]) / cfg.model_stride
        for _ in range(iterations):
            embeddings = []
            for index, (level, patches) in enumerate(zip(pyramid, query_patches)):
                around = sample_patches(level, coords / 2**index, cfg.corr_radius)
                volume = torch.einsum("snhwc,nijc->snhwij", around, patches)
                embeddings.append(self.corr_mlp(volume.reshape(frames * num_points, side**4)))
            correlation = torch.cat(embeddings, dim=-1).reshape(frames, num_points, -1)
            step = coords[1:] - coords[:-1]
            zero = torch.zeros_like(coords[:1])
            forward_motion = torch.cat([-step, zero]) / motion_scale  # to the next frame, 0 at the window's end
            backward_motion = torch.cat([zero, step]) / motion_scale  # from the previous frame, 0 at its start
            motion = motion_encoding(torch.cat([forward_motion, backward_motion], dim=-1), cfg.rel_pos_frequencies)
            tokens = torch.cat([vis[..., None], conf[..., None], correlation, motion], dim=-1)
            tokens = tokens.transpose(0, 1) + self.time_emb[0, :frames]  # (N, S, D)
            delta = self.updateformer(tokens[None])[0].transpose(0, 1)  # (S, N, 4)
            coords = coords + delta[..., :2]
            vis = vis + delta[..., 2]
            conf = conf + delta[..., 3]
        return coords, vis, conf


# --- checkpoint ----------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: safetensors, or a torch state dict (plain or under "model"), no pickle code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoTracker checkpoint not found: {str(path)!r} (give the local path of "
                                f"scaled_online.pth; nothing is downloaded)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"CoTracker checkpoint {str(path)!r} could not be read as a torch state dict "
                             f"(weights_only): {error}") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"CoTracker checkpoint {str(path)!r} is not a state dict of tensors")
    return state


def load_weights(model: CoTrackerThreeOnlineNet, path: str | Path) -> None:
    """Load a checkpoint into `model` strictly; a mismatch raises a ValueError naming the file and a few keys."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
            if names:
                more = f", ... ({len(names)} in all)" if len(names) > SHOWN_KEYS else ""
                parts.append(f"{label}: {', '.join(names[:SHOWN_KEYS])}{more}")
        raise ValueError(f"CoTracker checkpoint {str(path)!r} does not fit the CoTracker3 online architecture of "
                         f"this CoTrackerConfig (window_len, corr_levels, corr_radius, widths and depths must be "
                         f"the checkpoint's); " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_cotracker(config: CoTrackerConfig) -> CoTrackerThreeOnlineNet:
    """The network of `config` with the weights of `config.checkpoint`, in eval mode on `config.device`."""
    if not config.checkpoint:
        raise ValueError("CoTrackerConfig.checkpoint is empty: give the local path of scaled_online.pth")
    model = CoTrackerThreeOnlineNet(config)
    load_weights(model, config.checkpoint)
    return model.to(config.device).eval()


# --- coordinates -----------------------------------------------------------------------------------------
def frame_to_model(points: np.ndarray, frame_hw: tuple[int, int], model_hw: tuple[int, int]) -> np.ndarray:
    """(N, 2) frame pixels (u, v) -> model-resolution pixels; corners aligned, as the resize of the frames."""
    return points * model_scale(frame_hw, model_hw)


def model_to_frame(points: np.ndarray, frame_hw: tuple[int, int], model_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of `frame_to_model`."""
    return points / model_scale(frame_hw, model_hw)


def model_scale(frame_hw: tuple[int, int], model_hw: tuple[int, int]) -> np.ndarray:
    (frame_h, frame_w), (model_h, model_w) = frame_hw, model_hw
    return np.array([(model_w - 1) / (frame_w - 1), (model_h - 1) / (frame_h - 1)], dtype=np.float64)


# --- tracker ---------------------------------------------------------------------------------------------
@dataclass
class WindowFrame:
    """One frame of the sliding window: its features and the model's latest estimate there (feature cells, logits)."""

    index: int  # frame number since reset
    pyramid: list[torch.Tensor]  # per level (C, h, w)
    coords: torch.Tensor  # (N, 2)
    vis: torch.Tensor  # (N,)
    conf: torch.Tensor  # (N,)


class CoTrackerOnline(PointTracker):
    """CoTracker3 online over a sliding window of the last `window_len` frames (see the module docstring)."""

    def __init__(self, cotracker: CoTrackerConfig | None = None, config: TrackerConfig | None = None,
                 model: CoTrackerThreeOnlineNet | None = None) -> None:
        """`model` overrides loading `cotracker.checkpoint` (it must be built from the same CoTrackerConfig)."""
        self.cotracker = cotracker or CoTrackerConfig()
        self.config = config or TrackerConfig()
        if self.config.seeding != "grid":
            raise ValueError(f"CoTrackerOnline seeds its queries on a grid only, got seeding={self.config.seeding!r}")
        self.model = (model if model is not None else load_cotracker(self.cotracker)).to(self.cotracker.device).eval()
        self.device = torch.device(self.cotracker.device)
        self.flow_calls = 0  # model runs (window refinements) so far
        n, b = self.config.num_points, self.config.buffer_length
        self._positions = RingBuffer(b, (n, 2), np.float32)
        self._visible = RingBuffer(b, (n,), bool, fill=False)
        self._window: deque[WindowFrame] = deque(maxlen=self.cotracker.window_len)
        self._seed_points: np.ndarray | None = None
        self._query_patches: list[torch.Tensor] | None = None
        self._queries: np.ndarray | None = None
        self._hw: tuple[int, int] | None = None
        self._state: TrackState | None = None

    @property
    def state(self) -> TrackState | None:
        return self._state

    @property
    def queries(self) -> np.ndarray | None:
        """(N, 2) query points (u, v) at the first frame since reset (None before it)."""
        return None if self._queries is None else self._queries.copy()

    def reset(self, points: np.ndarray | None = None) -> None:
        self._seed_points = checked_seed_points(points, self.config.num_points)
        self._positions.clear()
        self._visible.clear()
        self._window.clear()
        self._query_patches = None
        self._queries = None
        self._hw = None
        self._state = None

    @torch.inference_mode()
    def update(self, frame: np.ndarray) -> TrackState:
        rgb = self._check_frame(frame)
        pyramid = self.model.encode(self._to_model_input(rgb))
        pyramid = [level[0] for level in pyramid]
        if self._hw is None:
            self._start(rgb.shape[:2], pyramid)
        else:
            self._advance(pyramid)
        positions, visible = self._positions.chronological(), self._visible.chronological()
        age = np.full(self.config.num_points, self._positions.count, dtype=np.int32)
        self._state = TrackState(positions, visible, age, self._positions.count)
        return self._state

    # --- internals ---------------------------------------------------------------------------------
    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be a uint8 RGB (H, W, 3) or grey (H, W) numpy array, got "
                             f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}")
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 2 or frame.shape[1] < 2:
            raise ValueError(f"frame must be uint8 RGB (H, W, 3) or grey (H, W), at least 2 x 2; got {frame.shape}")
        if self._hw is not None and frame.shape[:2] != self._hw:
            raise ValueError(f"frame size changed mid-stream: expected (H, W) = {self._hw} as in the first frame "
                             f"since reset(), got {frame.shape[:2]}; call reset() before feeding frames of another size")
        return frame

    def _to_model_input(self, rgb: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float()
        image = F.interpolate(image, self.cotracker.model_resolution, mode="bilinear", align_corners=True)
        return image / 127.5 - 1.0

    def _to_cells(self, points: np.ndarray) -> torch.Tensor:
        model_px = frame_to_model(points.astype(np.float64), self._hw, self.cotracker.model_resolution)
        return torch.from_numpy(model_px / self.cotracker.model_stride).float().to(self.device)

    def _to_frame(self, cells: torch.Tensor) -> np.ndarray:
        model_px = cells.double().cpu().numpy() * self.cotracker.model_stride
        return model_to_frame(model_px, self._hw, self.cotracker.model_resolution).astype(np.float32)

    def _start(self, hw: tuple[int, int], pyramid: list[torch.Tensor]) -> None:
        self._hw = hw
        self._queries = self._seed_queries(*hw)
        cells = self._to_cells(self._queries)
        self._query_patches = self.model.query_patches([level[None] for level in pyramid], cells)
        zeros = torch.zeros(len(cells), device=self.device)
        self._window.append(WindowFrame(0, pyramid, cells, zeros, zeros.clone()))
        self._positions.push(self._queries)
        self._visible.push(inside_image(self._queries, *hw))

    def _seed_queries(self, height: int, width: int) -> np.ndarray:
        """Given points first, the rest (and given points outside the frame) on evenly spread grid cells."""
        n = self.config.num_points
        rows, cols = grid_shape(n, height, width)
        grid = grid_cell_centres(rows, cols, height, width)
        queries = grid[np.linspace(0, len(grid), n, endpoint=False).astype(np.int64)]
        if self._seed_points is not None:
            given = self._seed_points
            usable = inside_image(given, height, width)
            queries[: len(given)][usable] = given[usable]
        return queries.astype(np.float32)

    def _advance(self, pyramid: list[torch.Tensor]) -> None:
        latest = self._window[-1]
        # A new frame starts from the newest estimate, as the official window hand-over pads with it.
        self._window.append(WindowFrame(latest.index + 1, pyramid, latest.coords, latest.vis, latest.conf))
        last_slot = (self._positions.write_index - 1) % self._positions.data.shape[0]
        self._positions.push(self._positions.data[last_slot].copy())
        self._visible.push(self._visible.data[last_slot].copy())
        if (latest.index + 2) % self.cotracker.update_every == 0:
            self._run_window()

    def _run_window(self) -> None:
        frames = list(self._window)
        padding = self.cotracker.window_len - len(frames)
        padded = frames + [frames[-1]] * padding
        pyramid = [torch.stack([f.pyramid[level] for f in padded]) for level in range(self.cotracker.corr_levels)]
        coords, vis, conf = self.model.refine(
            pyramid, self._query_patches, torch.stack([f.coords for f in padded]),
            torch.stack([f.vis for f in padded]), torch.stack([f.conf for f in padded]), self.cotracker.iterations)
        self.flow_calls += 1
        newest = frames[-1].index
        probability = torch.sigmoid(vis) * torch.sigmoid(conf)
        visible = (probability > self.cotracker.visibility_threshold).cpu().numpy()
        positions = self._to_frame(coords)
        length = self._positions.data.shape[0]
        for offset, window_frame in enumerate(frames):
            window_frame.coords, window_frame.vis, window_frame.conf = coords[offset], vis[offset], conf[offset]
            frames_ago = newest - window_frame.index
            if window_frame.index == 0 or frames_ago >= len(self._positions):
                continue  # the query frame keeps the queries; frames out of the buffer are gone
            slot = (self._positions.write_index - 1 - frames_ago) % length
            points = positions[offset]
            self._positions.data[slot] = points
            self._visible.data[slot] = visible[offset] & inside_image(points, *self._hw)
