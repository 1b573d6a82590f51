"""The small vision-language-action model all our policies share, and its configuration.

Token sequence fed to the transformer trunk:

    [language] [state] [image patches (+ Ego3D of depth)] ([further cameras' patches]) ([previous frames' patches])
    ([separator] [traced-image patches]) ([trace tokens]) ([trace query]) [action queries]

- image patches: `ConvPatchEncoder` (SigLIP's place), one token per patch; or, with
  `backbone.kind = "paligemma"`, a PaliGemma(2) checkpoint's SigLIP tower, and its Gemma decoder as the
  trunk (stvla.policies.paligemma);
- Ego3D: SpatialVLA's 3D position encoding of the (raw or traced) depth, added token by token;
- further cameras (`cameras` > 1, e.g. a wrist camera): each one's patches with a learned camera
  embedding, no Ego3D (the depth and the traces are the first camera's);
- language: a frozen sentence embedding (all-MiniLM-L6-v2) projected to one token, or (LLARVA) the
  word pieces of a structured prompt, read into PROMPT_LATENTS latents by cross-attention;
- a second image with a learned separator token, for TraceVLA's [original, traced] pair;
- trace tokens (ours, beyond both papers): one token per chosen trace, read from its points
  (stvla.policies.trace_encoder);
- one learned query per action of the chunk; each reads out the action tokens of its step as
  classification logits: the adaptive grid's (translation over the spherical grid, gripper) for an end
  effector, one per action dimension for any other action (`action_layout`, stvla.policies.action_layout);
- LLARVA's trace query reads out the future end-effector path as P pixel positions.

The policies (spatialvla, tracevla, st, tracetokens, llarva) differ only in which inputs their processors feed, so the same
checkpoint can move between them (ST-VLA fine-tunes a SpatialVLA-style base).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as functional
from torch import nn

from stvla import features as F
from stvla.config import KEY_NEUTRAL
from stvla.policies.action_layout import LAYOUTS
from stvla.policies.action_tokenizer import (
    ActionGridConfig,
    AdaptiveActionGrid,
    PerDimensionConfig,
    PerDimensionTokenizer,
)
from stvla.policies.ego3d import Ego3DConfig, Ego3DEncoder
from stvla.policies.image_encoder import ConvPatchEncoder, ImageEncoderConfig
from stvla.policies.normalizer import ActionNormalizer, StateNormalizer
from stvla.policies.paligemma import GemmaTrunk, SiglipPatchEncoder, backbone_shape, load_paligemma
from stvla.policies.prompt import PROMPT_LATENTS, PromptResampler, PromptTokens
from stvla.policies.trace_encoder import TraceTokenEncoder
from stvla.policies.trunk import Trunk, TrunkConfig

TEXT_DIM = 384  # all-MiniLM-L6-v2 sentence embedding width
LANGUAGE_INPUTS = ("sentence", "prompt")
BACKBONES = ("small", "paligemma")


# The sizes a model config may take (an image of 4096 px, 1024 actions a chunk, ... are far beyond any real one).
SIZE_LIMITS = {"image_size": 4096, "patch_size": 512, "width": 16384, "chunk_size": 1024, "action_dim": 1024,
               "state_dim": 4096, "prompt_max_tokens": 65536}


@dataclass
class BackboneConfig:
    kind: str = "small"  # "small": conv patch encoder + our trunk, trained here; "paligemma": a PaliGemma(2) checkpoint's SigLIP tower and Gemma decoder
    path: str = ""  # paligemma: local directory of a transformers checkpoint (config.json + *.safetensors), nothing is downloaded
    dtype: str = "float32"  # paligemma: weight dtype: float32, bfloat16 or float16


@dataclass
class VLAConfig:
    image_size: int = 128  # input image side in pixels (the dataset's)
    patch_size: int = 16  # image and Ego3D patch side in pixels
    width: int = 128  # token width throughout
    use_ego3d: bool = True  # add Ego3D position tokens of the depth to the image tokens
    two_images: bool = False  # TraceVLA: encode [original, traced] joined by a separator token (set by the policy type)
    chunk_size: int = 4  # actions predicted per forward pass
    n_action_steps: int = 4  # actions of a chunk executed before predicting again
    language: str = "sentence"  # "sentence": one pooled MiniLM token; "prompt": word pieces of a structured prompt (LLARVA)
    prompt_max_tokens: int = 256  # "prompt" language: word pieces a prompt may have (more is an error, never cut)
    trace_points: int = 0  # LLARVA: future end-effector trace points predicted beside the actions (0 = none)
    trace_loss_weight: float = 1.0  # weight of the trace loss (L1 in image-normalised units) beside the action loss
    action_dim: int = 4  # robot action dimension (Meta-World: dx, dy, dz, gripper)
    state_dim: int = 4  # proprio dimension (hand position, gripper opening)
    previous_frames: int = field(default=0, metadata=KEY_NEUTRAL)  # frame stacking: also encode the k frames before this one (RGB, no Ego3D), another way to give history
    use_state: bool = field(default=True, metadata=KEY_NEUTRAL)  # a proprio-state token; false: image, depth and instruction only, the papers' inputs
    trace_tokens: bool = field(default=False, metadata=KEY_NEUTRAL)  # one token per chosen trace, read from its points (set by the policy type tracetokens)
    cameras: int = field(default=1, metadata=KEY_NEUTRAL)  # cameras read (the dataset's --camera list): the first with depth and traces, the others' patches after its own
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # patch encoder
    ego3d: Ego3DConfig = field(default_factory=Ego3DConfig)  # 3D position encoder of depth
    trunk: TrunkConfig = field(default_factory=TrunkConfig)  # transformer trunk
    grid: ActionGridConfig = field(default_factory=ActionGridConfig)  # adaptive action grid tokenizer (action_layout "ee")
    action_layout: str = field(default="ee", metadata=KEY_NEUTRAL)  # action tokenizer: "ee", the adaptive grid over an end effector's x y z (roll pitch yaw) gripper; "joint", per-dimension bins for any other action
    bins: PerDimensionConfig = field(default_factory=PerDimensionConfig, metadata=KEY_NEUTRAL)  # per-dimension bins (action_layout "joint")
    backbone: BackboneConfig = field(default_factory=BackboneConfig, metadata=KEY_NEUTRAL)  # image encoder and trunk: ours or PaliGemma's

    def __post_init__(self) -> None:
        # Checked as the config is made (from flags or a config.json): NaN would pass every later comparison.
        if not 0 <= self.trace_loss_weight < float("inf"):
            raise ValueError(f"model.trace_loss_weight must be a finite number >= 0, got {self.trace_loss_weight}")

    def validate(self) -> None:
        for name, most in SIZE_LIMITS.items():  # the upper bounds keep a mistyped size from asking for terabytes
            if not 1 <= getattr(self, name) <= most:
                raise ValueError(f"model.{name} must be in [1, {most}], got {getattr(self, name)}")
        if self.previous_frames < 0:
            raise ValueError(f"previous_frames must be >= 0, got {self.previous_frames}")
        if not 1 <= self.cameras <= F.MAX_CAMERAS:
            raise ValueError(f"model.cameras must be in [1, {F.MAX_CAMERAS}], got {self.cameras}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.use_ego3d and self.patch_size % self.ego3d.samples_per_side:
            raise ValueError(f"patch_size {self.patch_size} is not a multiple of ego3d.samples_per_side "
                             f"{self.ego3d.samples_per_side}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"n_action_steps must be in [1, chunk_size={self.chunk_size}], got {self.n_action_steps}")
        if self.language not in LANGUAGE_INPUTS:
            raise ValueError(f"unknown language input {self.language!r}; valid: {', '.join(LANGUAGE_INPUTS)}")
        if self.trace_points < 0:
            raise ValueError(f"trace_points must be >= 0, got {self.trace_points}")
        if self.action_layout not in LAYOUTS:
            raise ValueError(f"unknown action_layout {self.action_layout!r}; valid: {', '.join(LAYOUTS)}")
        if self.action_layout == "joint" and any(d >= self.action_dim for d in self.bins.gripper_dims):
            raise ValueError(f"bins.gripper_dims {self.bins.gripper_dims} lie outside the {self.action_dim}-D action")
        if self.action_layout == "ee" and self.grid.action_dim != self.action_dim:
            raise ValueError(f"action_dim {self.action_dim} differs from the action grid's {self.grid.action_dim}-D "
                             f"layout (grid.translation_dims, grid.gripper_dim, grid.rotation_dims)")
        if self.backbone.kind not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone.kind!r}; valid: {', '.join(BACKBONES)}")
        if self.backbone.kind == "paligemma":
            width, _ = backbone_shape(self.backbone.path)
            if self.width != width:
                raise ValueError(f"width {self.width} differs from the PaliGemma decoder's hidden size {width} "
                                 f"({self.backbone.path}/config.json); `with_backbone_shape()` sets it")
        elif self.width != self.trunk.width or self.width != self.image.width:
            raise ValueError(f"width {self.width} must equal trunk.width {self.trunk.width} and image.width "
                             f"{self.image.width}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def with_backbone_shape(self) -> VLAConfig:
        """This config with the width (and, where the image size allows, the patch grid) of its backbone:
        the PaliGemma decoder's hidden size, and SigLIP's grid so its tokens need no resampling."""
        if self.backbone.kind != "paligemma":
            return self
        width, grid = backbone_shape(self.backbone.path)
        patch_size = self.patch_size
        if self.image_size % grid == 0 and (self.image_size // grid) % self.ego3d.samples_per_side == 0:
            patch_size = self.image_size // grid
        return dataclasses.replace(self, width=width, patch_size=patch_size)


class SmallVLA(nn.Module):
    """Inputs -> chunk of action-token logits (see module docs). Owns its normalisers and tokenizer."""

    def __init__(self, config: VLAConfig, backbone_weights: bool = True):
        """`backbone_weights=False` builds a PaliGemma backbone without reading its weights (a saved
        checkpoint that is about to be loaded carries them)."""
        super().__init__()
        config.validate()
        self.config = config
        width = config.width
        paligemma = None
        if config.backbone.kind == "paligemma":
            paligemma = load_paligemma(config.backbone.path, config.backbone.dtype, weights=backbone_weights)
            self.image_encoder = SiglipPatchEncoder(paligemma, config.image_size // config.patch_size)
        else:
            self.image_encoder = ConvPatchEncoder(config.image, config.patch_size)
        self.ego3d = Ego3DEncoder(config.ego3d, width) if config.use_ego3d else None
        if config.language == "prompt":
            self.prompt_tokens = PromptTokens(width, config.prompt_max_tokens)
            self.prompt_resampler = PromptResampler(width, PROMPT_LATENTS, config.trunk.heads)
        else:
            self.language = nn.Linear(TEXT_DIM, width)
        if config.trace_points:
            self.trace_query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
            self.trace_head = nn.Linear(width, 2 * config.trace_points)
        self.state = nn.Linear(config.state_dim, width) if config.use_state else None
        self.patch_position = nn.Parameter(torch.randn(1, config.num_patches, width) * 0.02)
        self.image_index = nn.Parameter(torch.randn(2, 1, width) * 0.02)  # which of the two images
        self.separator = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.action_queries = nn.Parameter(torch.randn(1, config.chunk_size, width) * 0.02)
        # Built here, after the small parts, so that a seed gives the small model the weights it always had.
        self.trunk = GemmaTrunk(paligemma) if paligemma is not None else Trunk(config.trunk)
        self.action_normalizer = ActionNormalizer(config.action_dim)
        self.state_normalizer = StateNormalizer(config.state_dim)
        self.tokenizer = AdaptiveActionGrid(config.grid) if config.action_layout == "ee" else \
            PerDimensionTokenizer(config.bins, config.action_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in self.tokenizer.num_classes.items()})
        if config.previous_frames:  # last: a default model's weights do not depend on this option
            self.previous_index = nn.Parameter(torch.randn(config.previous_frames, 1, width) * 0.02)
        if config.trace_tokens:  # likewise
            self.trace_encoder = TraceTokenEncoder(width)
        if config.cameras > 1:  # likewise: which of the further cameras (the first has image_index[0])
            self.camera_index = nn.Parameter(torch.randn(config.cameras - 1, 1, width) * 0.02)

    # --- encoding ------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, index: int, depth: torch.Tensor | None,
                     intrinsics: torch.Tensor | None) -> torch.Tensor:
        tokens = self.image_encoder(images) + self.patch_position + self.image_index[index]
        if self.ego3d is not None:
            tokens = tokens + self.ego3d(depth, intrinsics, self.config.patch_size)
        return tokens

    def image_tokens(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The tokens of the images traces can reach, each (B, patches, width): the current image's (its
        depth enters through Ego3D: ST-VLA's traces) and, with two images, the traced RGB's (TraceVLA's)."""
        images = batch[F.RGB]
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"this policy was built for {size}x{size} images, got {tuple(images.shape[-2:])}")
        depth = batch.get(F.DEPTH)
        intrinsics = batch.get(F.INTRINSICS)
        if self.ego3d is not None and (depth is None or intrinsics is None):
            raise ValueError(f"this policy encodes depth: the batch needs {F.DEPTH} and {F.INTRINSICS}")
        tokens = [self.encode_image(images, 0, depth, intrinsics)]
        if self.config.two_images:
            tokens.append(self.encode_image(batch[F.TRACED_RGB], 1, depth, intrinsics))
        return tokens

    def trace_reachable_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, tokens, width): every token traces can change: the images' (`image_tokens`) and the trace
        tokens (what `stvla eval` measures the traces' reach on)."""
        tokens = self.image_tokens(batch)
        if self.config.trace_tokens:
            tokens.append(self.trace_encoder(batch[F.TRACE_POINTS]))
        return torch.cat(tokens, dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits per action-token kind, each (B, chunk_size, classes); with trace_points, also "trace":
        (B, trace_points, 2) future end-effector pixels normalised to [0, 1] by the image size."""
        images = batch[F.RGB]
        current, *traced = self.image_tokens(batch)
        batch_size = len(images)
        if self.config.language == "prompt":
            language, language_mask = self.prompt_tokens(batch[F.PROMPT])
            language = self.prompt_resampler(language, language_mask)
            language_mask = torch.ones(language.shape[:2], dtype=torch.bool, device=images.device)
        else:
            language = self.language(batch[F.LANGUAGE]).unsqueeze(1)
            language_mask = torch.ones(batch_size, 1, dtype=torch.bool, device=images.device)
        parts = [language]
        if self.state is not None:
            parts.append(self.state(self.state_normalizer.normalize(batch[F.STATE])).unsqueeze(1))
        parts.append(current)
        for i in range(1, self.config.cameras):  # further cameras: RGB only
            images_i = batch[F.camera_feature(i)]
            parts.append(self.image_encoder(images_i) + self.patch_position + self.camera_index[i - 1])
        if self.config.previous_frames:  # (B, 3k, H, W): the frames before, oldest first, without Ego3D
            for i, previous in enumerate(batch[F.PREVIOUS_RGB].split(3, dim=1)):
                parts.append(self.image_encoder(previous) + self.patch_position + self.previous_index[i])
        if self.config.two_images:
            parts += [self.separator.expand(batch_size, -1, -1), *traced]
        if self.config.trace_tokens:
            parts.append(self.trace_encoder(batch[F.TRACE_POINTS]))
        if self.config.trace_points:
            parts.append(self.trace_query.expand(batch_size, -1, -1))
        parts.append(self.action_queries.expand(batch_size, -1, -1))
        tokens = torch.cat(parts, dim=1)
        padding = None
        if not language_mask.all():  # prompts of different lengths: nobody attends to their padding
            padding = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=images.device)
            padding[:, : language.shape[1]] = ~language_mask
        hidden = self.trunk(tokens, padding)
        out = {name: head(hidden[:, -self.config.chunk_size:]) for name, head in self.heads.items()}
        if self.config.trace_points:
            trace = self.trace_head(hidden[:, -self.config.chunk_size - 1])
            out["trace"] = torch.sigmoid(trace).view(batch_size, self.config.trace_points, 2)
        return out

    # --- training and inference -------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the action tokens of every non-padded step of the chunk; with trace_points,
        plus the weighted L1 distance of the predicted future trace to "trace_target" where "trace_mask"."""
        logits = self(batch)
        trace = logits.pop("trace", None)
        targets = self.tokenizer.encode(self.action_normalizer.normalize(batch[F.ACTION]))
        valid = ~batch[F.ACTION_IS_PAD]
        losses, logs = [], {}
        if trace is not None:
            size = self.config.image_size
            mask = batch[F.TRACE_MASK]
            target = batch[F.TRACE_TARGET] / size
            distances = (trace - target).abs().sum(-1)[mask]
            # A rank's share of a global batch divides by the global count (its share of the global mean).
            trace_loss = distances.sum() / batch[F.LOSS_COUNT_TRACES] if F.LOSS_COUNT_TRACES in batch else distances.mean()
            losses.append(self.config.trace_loss_weight * trace_loss)
            logs["loss_trace"] = float(trace_loss.detach())
            logs["trace_err_px"] = float((size * (trace - target)).norm(dim=-1)[mask].mean().detach())
        for name, kind_logits in logits.items():
            if F.LOSS_COUNT_ACTIONS in batch:
                loss = functional.cross_entropy(kind_logits[valid], targets[name][valid], reduction="sum") \
                    / batch[F.LOSS_COUNT_ACTIONS]
            else:
                loss = functional.cross_entropy(kind_logits[valid], targets[name][valid])
            losses.append(loss)
            logs[f"loss_{name}"] = float(loss.detach())
            logs[f"acc_{name}"] = float((kind_logits[valid].argmax(-1) == targets[name][valid]).float().mean())
        total = torch.stack(losses).sum()
        logs["loss"] = float(total.detach())
        return total, logs

    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, chunk_size, action_dim) actions in robot units (the most likely token of each kind), and
        with trace_points the (B, trace_points, 2) predicted future trace in pixels (else None)."""
        out = self(batch)
        # argmax over NaN logits still picks a bin: a NaN anywhere must stop here, not become an action.
        broken = [name for name, value in out.items() if not torch.isfinite(value).all()]
        if broken:
            raise ValueError(f"the model computed non-finite {', '.join(broken)} outputs from finite inputs: its "
                             f"weights or normalisers hold NaN or inf")
        trace = out.pop("trace", None)
        tokens = {name: logits.argmax(-1) for name, logits in out.items()}
        actions = self.action_normalizer.unnormalize(self.tokenizer.decode(tokens))
        return actions, None if trace is None else trace * self.config.image_size
