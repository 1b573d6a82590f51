"""Policies: the shared small VLA and its blocks (image encoder, Ego3D, text, trunk, action grid),
one module per policy (spatialvla, tracevla, st), and a registry by name."""

from stvla.policies.base import Policy, PolicyConfig, TracedPolicyConfig
from stvla.policies.registry import POLICIES, load_policy, make_policy, policy_class

__all__ = ["POLICIES", "Policy", "PolicyConfig", "TracedPolicyConfig", "load_policy", "make_policy", "policy_class"]
