"""The settings of CoTracker3 online (stvla.traces.cotracker), apart from the network so that trace settings
can carry them without importing torch: the released model's architecture as defaults, and how it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

# How often the model runs: as the authors' online predictor does, or our every-frame refinement.
SCHEDULES: tuple[str, ...] = ("official", "refine")


@dataclass
class CoTrackerConfig:
    checkpoint: str = ""  # local path of scaled_online.pth (state dict, maybe under "model") or a .safetensors file
    device: str = "cpu"  # torch device the model runs on
    model_resolution: tuple[int, int] = (384, 512)  # (H, W) every frame is resized to (the paper's 384 x 512)
    window_len: int = 16  # frames the model sees at once (16 for the released online model)
    schedule: str = "official"  # "official": the authors' online loop (first run on the first full window, then every window_len // 2 frames); "refine": ours (see update_every)
    update_every: int = 1  # "refine" only: a model run every k frames from the second frame on, the window padded until full
    iterations: int = 6  # refinement iterations per run (the official online predictor uses 6)
    visibility_threshold: float = 0.6  # visible when sigmoid(vis) * sigmoid(conf) exceeds this (official online rule)
    model_stride: int = 4  # encoder output stride (feature map = model_resolution / stride)
    corr_radius: int = 3  # r: correlation patches are (2r + 1) x (2r + 1) feature cells
    corr_levels: int = 4  # feature pyramid levels the correlation is sampled from
    corr_embed_dim: int = 256  # output of corr_mlp per pyramid level
    corr_hidden_dim: int = 384  # hidden width of corr_mlp
    latent_dim: int = 128  # channels of the encoder's feature maps
    hidden_size: int = 384  # width of the update transformer
    num_heads: int = 8  # attention heads of the update transformer (hidden_size must divide by it)
    time_depth: int = 3  # transformer blocks attending over time
    space_depth: int = 3  # blocks attending across tracks via virtual tracks (time_depth must divide by it)
    mlp_ratio: float = 4.0  # transformer MLP width / hidden_size
    num_virtual_tracks: int = 64  # learned tokens that carry information between tracks
    rel_pos_frequencies: int = 10  # frequencies of the sinusoidal encoding of frame-to-frame motion

    def __post_init__(self) -> None:
        self.model_resolution = tuple(int(s) for s in self.model_resolution)
        height, width = self.model_resolution
        stride = self.model_stride
        if stride < 1 or height % stride or width % stride:
            raise ValueError(f"model_resolution {self.model_resolution} must be multiples of model_stride {stride}")
        # The encoder's deepest layer works at 1/16 scale and instance-normalises it: it needs > 1 cell.
        if height < 16 or width < 16 or (height // 16) * (width // 16) < 2:
            raise ValueError(f"model_resolution {self.model_resolution} is too small (at least 16 x 32)")
        if min(height, width) // stride < 2 ** (self.corr_levels - 1):
            raise ValueError(f"model_resolution {self.model_resolution} is too small for {self.corr_levels} "
                             f"pyramid levels at stride {stride}")
        if self.window_len < 2:
            raise ValueError(f"window_len must be >= 2, got {self.window_len}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not 1 <= self.update_every <= self.window_len // 2:
            raise ValueError(f"update_every must be in [1, window_len // 2 = {self.window_len // 2}] so that "
                             f"every frame is refined at least twice, got {self.update_every}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0 <= self.visibility_threshold < 1:
            raise ValueError(f"visibility_threshold must be in [0, 1), got {self.visibility_threshold}")
        if self.corr_radius < 1 or self.corr_levels < 1:
            raise ValueError(f"corr_radius and corr_levels must be >= 1, got {self.corr_radius}, {self.corr_levels}")
        if self.latent_dim % 4:
            raise ValueError(f"latent_dim must be a multiple of 4 (encoder widths), got {self.latent_dim}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        if self.space_depth < 1 or self.time_depth % self.space_depth:
            raise ValueError(f"time_depth {self.time_depth} must be a multiple of space_depth {self.space_depth}")
        if self.num_virtual_tracks < 1:
            raise ValueError(f"num_virtual_tracks must be >= 1, got {self.num_virtual_tracks}")

    @property
    def transformer_input_dim(self) -> int:
        """Visibility + confidence logits, correlation embeddings, encoded forward/backward motion (1110 official)."""
        motion = 4 * (1 + 2 * self.rel_pos_frequencies)
        return 2 + self.corr_levels * self.corr_embed_dim + motion
