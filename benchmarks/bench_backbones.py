"""What the papers' large components cost on this machine: one ST-VLA control step on a PaliGemma2-3B-224
backbone, and one ZoeDepth estimate, at full size on 2 CPU cores.

    python benchmarks/bench_backbones.py [--steps 5]

No pretrained weight can be downloaded here, and speed does not depend on the weights' values: both
models are built at their published sizes (PaliGemma2-3B-224: SigLIP-so400m/14 at 224 px and a
Gemma2-2B decoder; ZoeDepth: transformers' default ZoeDepthConfig, a BEiT-L/16 at 384 x 512) with random
weights, through the same loading code as real checkpoints (a saved config.json, stvla's adapters).
Writes benchmarks/results/backbones.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla.envs import make_env  # noqa: E402
from stvla.policies.registry import make_policy  # noqa: E402
from stvla.policies.st import STConfig  # noqa: E402
from stvla.policies.vla import BackboneConfig, VLAConfig  # noqa: E402

# google/paligemma2-3b-pt-224: SigLIP-so400m/14 at 224 px and Gemma2-2B.
PALIGEMMA2_3B_224 = {
    "model_type": "paligemma", "image_token_id": 257152, "projection_dim": 2304, "hidden_size": 2304,
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                      "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 14, "image_size": 224,
                      "projection_dim": 2304},
    "text_config": {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 257216,
                    "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": 30.0,
                    "attn_logit_softcapping": 50.0, "hidden_activation": "gelu_pytorch_tanh"},
}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def paligemma_control_step(work: Path, steps: int) -> dict:
    """select_action of an `st` policy on the PaliGemma2 backbone, one forward per step (chunks of 1)."""
    (work / "paligemma2-3b-224").mkdir(parents=True)
    (work / "paligemma2-3b-224" / "config.json").write_text(json.dumps(PALIGEMMA2_3B_224))
    vla = VLAConfig(image_size=128, n_action_steps=1,
                    backbone=BackboneConfig(kind="paligemma", path=str(work / "paligemma2-3b-224")))
    started = time.perf_counter()
    policy = make_policy("st", STConfig(vla=vla), backbone_weights=False)  # the architecture, random weights
    build_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    policy.fit_statistics(rng.uniform(-1, 1, (500, 4)), rng.normal(size=(500, 4)))
    policy.eval()
    parameters = sum(p.numel() for p in policy.parameters())
    env = make_env("reach-v3", image_size=128)
    obs, _ = env.reset(seed=0)
    policy.reset()
    timings = []
    for _ in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        action = policy.select_action(obs)
        timings.append(time.perf_counter() - started)
        obs, *_ = env.step(action)
    env.close()
    return {"parameters_billion": round(parameters / 1e9, 2), "build_s": round(build_s, 1),
            "tokens": 1 + 1 + policy.config.vla.num_patches + vla.chunk_size,  # language, state, patches, queries
            "grid": policy.config.vla.image_size // policy.config.vla.patch_size,
            "step_s_median": round(float(np.median(timings[1:])), 2), "steps_timed": steps,
            "peak_rss_gib": round(peak_rss_gib(), 2)}


def zoedepth_estimate(work: Path, steps: int) -> dict:
    from transformers import ZoeDepthConfig, ZoeDepthForDepthEstimation
    from transformers.models.zoedepth.image_processing_pil_zoedepth import ZoeDepthImageProcessorPil

    from stvla.envs.depth_model import ZoeDepthEstimator

    directory = work / "zoedepth"
    ZoeDepthForDepthEstimation(ZoeDepthConfig()).save_pretrained(directory)
    ZoeDepthImageProcessorPil().save_pretrained(directory)
    estimator = ZoeDepthEstimator(directory)
    env = make_env("reach-v3", image_size=128)
    obs, _ = env.reset(seed=0)
    env.close()
    timings = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        estimator(obs[F.OBS_RGB])
        timings.append(time.perf_counter() - started)
    parameters = sum(p.numel() for p in estimator.model.parameters())
    pixels = estimator.processor(images=obs[F.OBS_RGB], return_tensors="pt")["pixel_values"]  # padded and resized
    return {"parameters_million": round(parameters / 1e6, 1), "estimate_s_median": round(float(np.median(timings[1:])), 2),
            "steps_timed": steps, "input": "x".join(map(str, pixels.shape[-2:]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions of each (after one warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as work:
        zoedepth = zoedepth_estimate(Path(work), args.steps)
        paligemma = paligemma_control_step(Path(work), args.steps)
    figures = {"paligemma2_3b_224": paligemma, "zoedepth": zoedepth}
    rows = [
        ((f"ST-VLA control step on a PaliGemma2-3B-224 backbone ({paligemma['parameters_billion']} B parameters, "
          f"float32, {paligemma['tokens']} tokens, trace update + forward): median s"),
         f"{paligemma['step_s_median']} ({paligemma['steps_timed']} steps)"),
        ("peak resident memory with the PaliGemma2-3B-224 policy loaded: GiB", f"{paligemma['peak_rss_gib']}"),
        ((f"ZoeDepth estimate of one 128 px frame (default config, {zoedepth['parameters_million']} M parameters, "
          f"resized to {zoedepth['input']}, with the mirrored pass): median s"),
         f"{zoedepth['estimate_s_median']} ({zoedepth['steps_timed']} frames)"),
    ]
    for row in rows:
        print(*row, sep=": ")
    record("backbones", figures, rows, "The papers' large components at full size on 2 CPU cores (random weights)")


if __name__ == "__main__":
    run(main)
