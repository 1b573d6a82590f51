"""CoTracker3's online network: its nn.Modules and the pure tensor functions they use.

The network is a re-implementation of CoTracker3's online model (facebookresearch/co-tracker,
cotracker3_online.py): a stride-4 CNN encoder (`fnet`), correlation features between a (2r+1)^2 patch
around each query point and a (2r+1)^2 neighbourhood around its current estimate at every level of a
feature pyramid (`corr_mlp` embeds each 4-D correlation volume), and the `updateformer` transformer
(attention over time per track, attention across tracks through a few learned virtual tracks), which
refines coordinates, visibility and confidence over a few iterations. Module, parameter and buffer names
follow the official state dict so that the released `scaled_online.pth` loads with
`load_state_dict(strict=True)` (stvla.traces.cotracker.weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stvla.traces.cotracker.config import CoTrackerConfig


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
