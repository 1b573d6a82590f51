"""Datasets: the episode store (LeRobot v3 layout), expert collection, the decoded and derived training
caches, and viewers. Feature keys are named in stvla.features."""

from stvla.data.collect import (
    FPS,
    CollectConfig,
    CollectSummary,
    collect,
    dataset_features,
    dataset_summary,
    run_expert_episode,
)
from stvla.data.store import DatasetError, EpisodeStore, EpisodeWriter
from stvla.data.video import VideoSettings, read_video, write_video

__all__ = [
    "FPS", "CollectConfig", "CollectSummary", "DatasetError", "EpisodeStore",
    "EpisodeWriter", "VideoSettings", "collect", "dataset_features", "dataset_summary",
    "read_video", "run_expert_episode", "write_video",
]
