"""Closed-loop evaluation of saved policies (layer 6): rollouts, success statistics, videos, plots."""

from stvla.evaluate.rollout import EvalConfig, evaluate, run_episode, summarize
from stvla.evaluate.stats import rate_summary, wilson_interval

__all__ = ["EvalConfig", "evaluate", "rate_summary", "run_episode", "summarize", "wilson_interval"]
