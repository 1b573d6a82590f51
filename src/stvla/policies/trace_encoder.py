"""Traces as tokens: one token per chosen trace, from its last b points (stvla.traces.points).

Per trace, each of its b window slots becomes 8 numbers: the point (x y z, or u v 0), its offset from the
trace's newest point (scaled up: the motion over a window is centimetres, or a few hundredths of the
image), how many frames before the current one it was seen (over 30), and whether it exists. A 1-D
convolution over time reads those, and a masked mean and max over the slots that exist pool them
into one token, plus a learned "trace" type embedding. A row without a trace becomes a learned
"no trace" token instead, so removing the traces (the test-time ablation) is the same as having none.
Nothing depends on K or b: the same weights read any number of traces of any length.
"""

from __future__ import annotations

import torch
from torch import nn

from stvla.traces.points import POINT_CHANNELS

OFFSET_SCALE = 10.0  # the offsets' scale: a decimetre (3D) or a twentieth of the image (2D) becomes 1
FRAMES_SCALE = 30.0  # frames before the current one, over this (the papers' b)
HIDDEN = 64  # channels of the convolution over time


class TraceTokenEncoder(nn.Module):
    """(B, K, b, 4) trace point arrays -> (B, K, width) tokens (see module docs)."""

    def __init__(self, width: int):
        super().__init__()
        features = 2 * 3 + 2  # point, offset from the newest, frames before the newest, exists
        self.convolution = nn.Sequential(
            nn.Conv1d(features, HIDDEN, kernel_size=3, padding=1), nn.GELU(),
            nn.Conv1d(HIDDEN, HIDDEN, kernel_size=3, padding=1), nn.GELU())
        self.project = nn.Sequential(nn.Linear(2 * HIDDEN, width), nn.GELU(), nn.Linear(width, width))
        self.trace_type = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.no_trace = nn.Parameter(torch.randn(1, 1, width) * 0.02)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.ndim != 4 or points.shape[-1] != POINT_CHANNELS:
            raise ValueError(f"trace points must be (B, K, b, {POINT_CHANNELS}), got {tuple(points.shape)}")
        batch, traces, length, _ = points.shape
        exists = points[..., 3:] > 0.5  # (B, K, b, 1)
        xyz = torch.where(exists, points[..., :3], torch.zeros_like(points[..., :3]))
        # The newest point that exists: the last slot with a point (0 where the trace is absent).
        slot = torch.arange(length, device=points.device).view(1, 1, length, 1)
        newest_slot = torch.where(exists, slot, torch.full_like(slot, -1)).amax(dim=2, keepdim=True)  # (B, K, 1, 1)
        newest = torch.gather(xyz, 2, newest_slot.clamp(min=0).expand(-1, -1, 1, 3))
        offsets = torch.where(exists, (xyz - newest) * OFFSET_SCALE, torch.zeros_like(xyz))
        # Counted from the current frame (the last slot), so a trace whose latest point is missing reads as older.
        frames_before = torch.where(exists, (length - 1 - slot).float() / FRAMES_SCALE, torch.zeros_like(xyz[..., :1]))
        inputs = torch.cat([xyz, offsets, frames_before, exists.float()], dim=-1)  # (B, K, b, 8)
        hidden = self.convolution(inputs.reshape(batch * traces, length, -1).transpose(1, 2))  # (BK, H, b)
        mask = exists.reshape(batch * traces, 1, length)
        count = mask.sum(-1).clamp(min=1)
        mean = (hidden * mask).sum(-1) / count
        peak = torch.where(mask, hidden, torch.full_like(hidden, -1e4)).amax(-1)
        tokens = self.project(torch.cat([mean, peak], dim=-1)).view(batch, traces, -1) + self.trace_type
        present = exists.any(dim=2)  # (B, K, 1)
        return torch.where(present, tokens, self.no_trace.expand(batch, traces, -1))
