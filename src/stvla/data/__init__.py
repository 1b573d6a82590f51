"""Datasets: the episode store (LeRobot v3 layout), expert collection, the decoded training cache, viewing."""

from stvla.data.collect import (
    DEPTH_KEY,
    FPS,
    RGB_KEY,
    CollectConfig,
    CollectSummary,
    collect,
    dataset_features,
    dataset_summary,
    episode_seed,
    run_expert_episode,
)
from stvla.data.store import DatasetError, EpisodeStore, EpisodeWriter
from stvla.data.video import VideoSettings, read_video, write_video

__all__ = [
    "DEPTH_KEY", "FPS", "RGB_KEY", "CollectConfig", "CollectSummary", "DatasetError", "EpisodeStore",
    "EpisodeWriter", "VideoSettings", "collect", "dataset_features", "dataset_summary", "episode_seed",
    "read_video", "run_expert_episode", "write_video",
]
