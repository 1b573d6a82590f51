"""The PaliGemma(2) backbone, on a tiny randomly initialised PaliGemma2 of the real architecture saved the
way transformers saves google/paligemma2-3b-pt-224: loaded from a local directory, it trains in stage 1,
takes LoRA on its Gemma decoder in stage 2, reloads to identical outputs, and matches transformers' own
prefix attention."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stvla.cli import main
from stvla.config import config_key
from stvla.policies.base import BACKBONE_DIR, WEIGHTS_FILE
from stvla.policies.paligemma import GemmaTrunk, SiglipPatchEncoder, load_paligemma
from stvla.policies.registry import load_policy, make_policy
from stvla.policies.st import STConfig
from stvla.policies.vla import BackboneConfig, VLAConfig
from stvla.train import TrainConfig, train
from stvla.train.samples import TrainingSamples

HIDDEN = 48


@pytest.fixture(scope="module")
def tiny_paligemma(tmp_path_factory):
    """A 2-layer SigLIP (56 px, patches of 14: a 4 x 4 grid) and a 2-layer Gemma2, saved to disk."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 56, "patch_size": 14},
        text_config={"model_type": "gemma2", "hidden_size": HIDDEN, "intermediate_size": 96, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 24, "vocab_size": 260,
                         "sliding_window": 32},
        projection_dim=HIDDEN, image_token_id=259)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("paligemma2-tiny")
    PaliGemmaForConditionalGeneration(config).save_pretrained(directory)
    return directory


def paligemma_vla(path, **changes) -> VLAConfig:
    return VLAConfig(image_size=64, backbone=BackboneConfig(kind="paligemma", path=str(path)), **changes)


def test_the_trunk_is_paligemmas_prefix_attention(tiny_paligemma):
    paligemma = load_paligemma(tiny_paligemma, "float32").eval()
    trunk = GemmaTrunk(paligemma)
    tokens = torch.randn(2, 9, HIDDEN)
    with torch.no_grad():
        ours = trunk(tokens)
        theirs = paligemma(inputs_embeds=tokens, token_type_ids=torch.zeros(2, 9, dtype=torch.long),
                           attention_mask=torch.ones(2, 9, dtype=torch.long)).last_hidden_state
        assert torch.allclose(ours, theirs, atol=1e-5)
        later = tokens.clone()
        later[:, -1] += 1.0  # bidirectional: the first token sees a change to the last
        assert not torch.allclose(trunk(later)[:, 0], ours[:, 0])
        padding = torch.zeros(2, 9, dtype=torch.bool)
        padding[0, 3] = True
        changed = tokens.clone()
        changed[0, 3] += 5.0  # a padded token is read by nobody
        assert torch.allclose(trunk(tokens, padding)[0, [0, 8]], trunk(changed, padding)[0, [0, 8]], atol=1e-6)


def test_siglip_tokens_land_on_the_vla_grid(tiny_paligemma):
    paligemma = load_paligemma(tiny_paligemma, "float32").eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        native = SiglipPatchEncoder(paligemma, 4)(images)  # SigLIP's own 4 x 4 grid
        coarse = SiglipPatchEncoder(paligemma, 2)(images)  # resampled by area to 2 x 2
    assert native.shape == (2, 16, HIDDEN) and coarse.shape == (2, 4, HIDDEN)
    square = native.view(2, 4, 4, HIDDEN)
    assert torch.allclose(coarse[:, 0], square[:, :2, :2].mean((1, 2)), atol=1e-5)


def test_policy_takes_the_backbones_shape_and_reloads_exactly(tiny_paligemma, tmp_path):
    policy = make_policy("st", STConfig(vla=paligemma_vla(tiny_paligemma)))
    assert policy.config.vla.width == HIDDEN and policy.config.vla.patch_size == 16  # 64 px / SigLIP's 4 x 4 grid
    reference = load_file(str(next(tiny_paligemma.glob("*.safetensors"))))
    ours = policy.model.state_dict()
    key = "embeddings.patch_embedding.weight"
    original = next(v for k, v in reference.items() if k.endswith(key))
    mine = next(v for k, v in ours.items() if k.startswith("image_encoder.") and k.endswith(key))
    assert torch.equal(mine, original)  # the checkpoint's weights, not a fresh init
    saved = policy.save_pretrained(tmp_path / "st")
    config = json.loads((saved / "config.json").read_text())
    assert config["config"]["vla"]["backbone"]["path"] == BACKBONE_DIR and (saved / BACKBONE_DIR / "config.json").is_file()
    reloaded = load_policy(saved)
    assert reloaded.config.vla.backbone.kind == "paligemma"
    state = reloaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ours.items())


def test_wrong_backbone_inputs_are_named(tiny_paligemma, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        make_policy("st", STConfig(vla=paligemma_vla(tmp_path)))
    with pytest.raises(ValueError, match="unknown backbone"):
        make_policy("st", STConfig(vla=VLAConfig(backbone=BackboneConfig(kind="gemma3"))))
    with pytest.raises(ValueError, match="hidden size 48"):
        paligemma_vla(tiny_paligemma, width=32).validate()


def test_default_backbone_leaves_cache_keys_unchanged():
    key = config_key(VLAConfig())
    assert "backbone" not in key and "width" in key
    assert config_key(paligemma_vla("/somewhere"))["backbone"]["kind"] == "paligemma"


def test_two_stages_on_a_paligemma_backbone(tiny_paligemma, small_dataset, tmp_path):
    root, _ = small_dataset
    assert main(["train", "--policy", "spatialvla", "--dataset", str(root), "--out", str(tmp_path / "s1"),
                 "--model.backbone.kind", "paligemma", "--model.backbone.path", str(tiny_paligemma),
                 "--steps", "12", "--batch_size", "4", "--warmup_steps", "2", "--save_every", "6", "--lr", "1e-3"]) == 0
    stage1 = tmp_path / "s1" / "policy"
    config = TrainConfig(policy="st", dataset=str(root), out=str(tmp_path / "s2"), init=str(stage1), steps=6,
                         batch_size=4, warmup_steps=2, save_every=3, lr=1e-2)
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, rank=4))
    unmerged = train(config, progress=False, stop_after=3)
    state = load_file(str(unmerged / "model.safetensors"))
    adapters = [k for k in state if "lora_" in k]
    assert adapters and all(".language_model." in k for k in adapters)  # the decoder only, never SigLIP
    final = train(config, progress=False)
    base, tuned = load_file(str(stage1 / WEIGHTS_FILE)), load_file(str(final / WEIGHTS_FILE))
    assert tuned.keys() == base.keys()
    q = next(k for k in base if k.endswith("layers.0.self_attn.q_proj.weight") and "language_model" in k)
    assert not torch.equal(tuned[q], base[q])
    siglip = next(k for k in base if k.startswith("image_encoder.vision_tower"))
    assert torch.equal(tuned[siglip], base[siglip])
    policy = load_policy(final)
    samples = TrainingSamples(root, policy, progress=False)
    with torch.no_grad():
        actions, _ = policy.model.predict_chunk(samples.batch(np.arange(4)))
    assert actions.shape == (4, 4, 4) and torch.isfinite(actions).all()


def test_an_old_or_missing_library_is_named():
    from stvla.requirements import require

    require("transformers", "4.0", "anything")  # installed and new enough: no error
    with pytest.raises(ImportError, match=r"The thing needs transformers >= 999.0 .* installed: \d"):
        require("transformers", "999.0", "The thing")
    with pytest.raises(ImportError, match="not installed"):
        require("no-such-package-stvla", "1.0", "The thing")


def test_a_default_checkpoint_keeps_the_bytes_it_always_had(tmp_path):
    """Caches key on a checkpoint's config.json bytes: settings added later must not appear in it at their
    defaults (the kept base and every cell keyed on a re-trained checkpoint would stop matching)."""
    from stvla.policies.base import CONFIG_FILE, checkpoint_fingerprint

    saved = make_policy("st").save_pretrained(tmp_path / "st")
    config = json.loads((saved / CONFIG_FILE).read_text())["config"]
    assert "backbone" not in config["vla"] and "cotracker" not in config["traces"]
    assert config["vla"]["width"] == 128 and config["traces"]["tracker_type"] == "lk"
    reloaded = config_key(load_policy(saved).config)  # compared as JSON: tuples come back as lists
    assert json.dumps(reloaded) == json.dumps(config_key(make_policy("st").config))
    fingerprints = []
    for name in ("one", "two"):
        torch.manual_seed(0)
        fingerprints.append(checkpoint_fingerprint(make_policy("st").save_pretrained(tmp_path / name)))
    assert fingerprints[0] == fingerprints[1]


@pytest.mark.parametrize("policy_type", ["tracevla", "llarva"])
def test_every_policy_type_runs_on_the_backbone(policy_type, tiny_paligemma, small_dataset):
    """TraceVLA's two images and LLARVA's prompt latents and trace head sit on the Gemma trunk too."""
    root, _ = small_dataset
    config = make_policy(policy_type).config
    config.vla = dataclasses.replace(config.vla, image_size=64, backbone=BackboneConfig("paligemma", str(tiny_paligemma)))
    policy = make_policy(policy_type, config)
    samples = TrainingSamples(root, policy, progress=False)
    policy.fit_statistics(samples.actions, samples.states)
    loss, logs = policy(samples.batch(np.arange(4), np.random.default_rng(0)))
    loss.backward()
    assert torch.isfinite(loss) and policy.config.vla.width == HIDDEN
    decoder = next(p for n, p in policy.model.named_parameters() if "language_model" in n and "q_proj" in n)
    assert decoder.grad is not None and decoder.grad.abs().sum() > 0  # the loss reaches the Gemma decoder
    if policy_type == "llarva":
        assert "trace_err_px" in logs
