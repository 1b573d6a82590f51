"""Policies: the shared small VLA and its blocks (image encoder, Ego3D, text, prompt, trunk, action grid,
the PaliGemma2 adapter), the input processor that turns observations and recorded frames into model
inputs, one module per policy type (spatialvla, tracevla, st, tracetokens, llarva: its config, processor and
policy), and a registry by name."""

from stvla.policies.base import Policy, PolicyConfig, TracedPolicyConfig
from stvla.policies.processor import InputProcessor
from stvla.policies.registry import POLICIES, load_policy, make_policy, policy_class

__all__ = ["POLICIES", "InputProcessor", "Policy", "PolicyConfig", "TracedPolicyConfig", "load_policy", "make_policy",
           "policy_class"]
