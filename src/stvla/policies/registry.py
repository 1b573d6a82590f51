"""Policies by name: `make_policy("st")`, `load_policy(checkpoint_dir)`."""

from __future__ import annotations

from pathlib import Path

from stvla.policies.base import Policy, read_checkpoint_config
from stvla.policies.llarva import LLARVAPolicy
from stvla.policies.spatialvla import SpatialVLAPolicy
from stvla.policies.st import STPolicy
from stvla.policies.tracetokens import TraceTokensPolicy
from stvla.policies.tracevla import TraceVLAPolicy

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (SpatialVLAPolicy, TraceVLAPolicy, STPolicy, TraceTokensPolicy,
                                                          LLARVAPolicy)}


def policy_class(name: str) -> type[Policy]:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    return POLICIES[name]


def make_policy(name: str, config=None, backbone_weights: bool = True) -> Policy:
    """A new, untrained policy of type `name` with `config` (or the type's default config).

    `backbone_weights=False` skips reading a PaliGemma backbone's weights (a checkpoint will overwrite them)."""
    return policy_class(name)(config, backbone_weights)


def load_policy(directory: str | Path) -> Policy:
    """Reload any saved policy (its type is read from the checkpoint's config.json)."""
    policy_type, _ = read_checkpoint_config(directory)
    if policy_type not in POLICIES:
        raise ValueError(f"{Path(directory) / 'config.json'}: unknown policy type {policy_type!r}; valid policies: "
                         f"{', '.join(POLICIES)}")
    return policy_class(policy_type).from_pretrained(directory)
