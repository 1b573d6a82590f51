"""Collect expert demonstrations from the simulator into an episode store.

Each episode is one scripted-expert rollout from a seeded random start. Seeds are a pure function of
(task, attempt number, split) (`stvla.envs.episode_seed`), so a collection is reproducible, `--resume` continues where a killed
run stopped, and training seeds never meet evaluation seeds.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from stvla import features as F
from stvla.config import KEY_NEUTRAL
from stvla.data.roles import DataConfig, is_depth_feature, resolve_roles
from stvla.data.store import EPISODES_META_PATH, EpisodeStore, EpisodeWriter, check_new_dataset_folder, frame_dtype
from stvla.envs import ROBOT_TYPE, EnvConfig, MetaWorldRGBDEnv, episode_seed, instruction_of, parse_tasks
from stvla.files import naming_the_file
from stvla.locks import writes_to_out

FPS = 80  # Meta-World control rate: 5 MuJoCo steps of 2.5 ms per action


DEPTH_FORMATS = ("video", "image", "float")


def depth_feature(image_size: int, depth_format: str = "video", depth_max: float = 4.0, source: str = "") -> dict:
    """The depth feature entry: LeRobot's depth (`is_depth_map`, which LeRobot lists among its depth keys)
    as LeRobot's 12-bit video, linear over [0, depth_max] metres (codes 1 mm apart: at most 0.5 mm off,
    the smallest), or as float32 TIFF images in the data files (exact, about 10x the bytes); or "float",
    the float32 column of earlier releases, which LeRobot does not see as depth (BENCHMARKS.md, "Reading
    datasets", has each one's size and error). `source` says where an estimated depth came from."""
    hw = [image_size, image_size]
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth_format {depth_format!r}: expected one of {', '.join(DEPTH_FORMATS)}")
    if depth_format == "float":
        feature = {"dtype": "float32", "shape": hw, "names": ["height", "width"]}
        info = {}
    else:
        feature = {"dtype": depth_format, "shape": [*hw, 1], "names": ["height", "width", "channels"]}
        info = {"is_depth_map": True, "depth_unit": "m"}
        if depth_format == "video":
            info.update({"video.depth_min": 0.0, "video.depth_max": float(depth_max), "video.shift": 0.0,
                         "video.use_log": False})
    if source:
        info["source"] = source
    return {**feature, "info": info} if info else feature


def stored_depth_format(feature: dict, default: str) -> str:
    """The depth format a dataset was written with (a resumed collection continues it as it is)."""
    return {"float32": "float", "image": "image", "video": "video"}.get(feature.get("dtype", ""), default)


def dataset_features(image_size: int, depth_model: str = "", depth_format: str = "video",
                     depth_max: float = 4.0) -> dict[str, dict]:
    """The LeRobot feature entries of a dataset collected at `image_size`; depth estimated by `depth_model`
    says so in its feature's info (a resumed collection must use the same depth source)."""
    hw = [image_size, image_size]
    source = f"estimated from RGB by the depth model {Path(depth_model).resolve()}" if depth_model else ""
    depth = depth_feature(image_size, depth_format, depth_max, source)
    return {
        F.RGB: {"dtype": "video", "shape": [*hw, 3], "names": ["height", "width", "channels"]},
        F.DEPTH: depth,
        F.STATE: {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]},
        F.EE_POSITION: {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
        F.EE_PIXEL: {"dtype": "float32", "shape": [2], "names": ["u", "v"]},
        F.INTRINSICS: {"dtype": "float32", "shape": [3, 3], "names": None},
        F.CAMERA_POSE: {"dtype": "float32", "shape": [4, 4], "names": None},
        F.ACTION: {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]},
        F.REWARD: {"dtype": "float32", "shape": [1], "names": None},
        F.SUCCESS: {"dtype": "bool", "shape": [1], "names": None},
        F.NEAR_OBJECT: {"dtype": "bool", "shape": [1], "names": None},
        F.GRASPED: {"dtype": "bool", "shape": [1], "names": None},
    }


@dataclass
class CollectConfig:
    task: str = "pick-place-v3"  # Meta-World task name; several comma-separated, "mt10" or "all"
    episodes: int = 50  # episodes to keep per task
    out: str = "runs/data"  # dataset directory (LeRobot v3 layout)
    workers: int = 1  # simulator processes
    resume: bool = False  # continue an existing dataset at `out` up to `episodes` per task
    keep_failures: bool = False  # keep episodes in which the expert failed (they are counted either way)
    camera: str = "corner3"  # the simulator camera to render from: corner, corner2, corner3, corner4, topview, behindGripper, gripperPOV (not a dataset feature key)
    image_size: int = 128  # square image side in pixels
    depth_max: float = 4.0  # metres; far background clipped to this
    depth_format: str = field(default="video", metadata=KEY_NEUTRAL)  # how depth is stored: video (LeRobot's 12-bit depth video, <= 0.5 mm off), image (LeRobot depth as float32 TIFF, exact, ~10x the bytes) or float (a column LeRobot does not see as depth)
    max_steps: int = 500  # steps before an episode is cut off
    max_attempts_factor: float = 3.0  # give up on a task after episodes * this attempts
    first_attempt: int = 0  # attempt index (hence seed) of each task's first episode: another value, other starts
    action_noise: float = field(default=0.0, metadata=KEY_NEUTRAL)  # DART: std of Gaussian noise added to the executed translation (the recorded action stays the expert's, so the data shows how to recover); 0 = none
    depth_model: str = field(default="", metadata=KEY_NEUTRAL)  # local depth model checkpoint (ZoeDepth or Depth Anything V2 metric) whose estimate is stored as depth ("" = rendered)
    depth_device: str = field(default="cpu", metadata=KEY_NEUTRAL)  # torch device the depth model runs on (cuda with one worker per GPU)

    def task_list(self) -> list[str]:
        return parse_tasks(self.task)

    def env_config(self, task: str) -> EnvConfig:
        config = EnvConfig(task=task, camera=self.camera, image_size=self.image_size,
                           depth_max=self.depth_max, max_episode_steps=self.max_steps, depth_model=self.depth_model,
                           depth_device=self.depth_device)
        config.validate()
        return config


@dataclass
class ExpertEpisode:
    """One expert rollout: frame-major arrays per dataset feature, and how it ended."""

    task: str
    attempt: int
    seed: int
    frames: dict[str, np.ndarray]
    success: bool
    reached_near_object: bool
    reached_grasp: bool

    @property
    def length(self) -> int:
        return len(self.frames[F.ACTION])


def run_expert_episode(env: MetaWorldRGBDEnv, seed: int, attempt: int = 0, action_noise: float = 0.0) -> ExpertEpisode:
    """Roll out the scripted expert from the seeded start until success or truncation.

    With `action_noise` (DART, Laskey et al. 2017) the robot executes the expert's translation plus Gaussian
    noise, drawn from the episode's seed, while the expert's own action is recorded: the states drift as a
    learned policy's do, and every one of them is labelled with the expert's correction."""
    obs, _ = env.reset(seed=seed)
    noise = np.random.default_rng(seed)
    steps: dict[str, list] = {key: [] for key in dataset_features(env.config.image_size)}
    success = False
    while True:
        action = env.expert_action()
        executed = action
        if action_noise > 0:
            executed = action.copy()
            executed[:3] = np.clip(action[:3] + noise.normal(0.0, action_noise, 3), -1.0, 1.0)
        next_obs, reward, _, truncated, info = env.step(executed)
        for key, obs_key in F.FEATURE_OF_OBSERVATION.items():
            steps[key].append(obs[obs_key])
        steps[F.ACTION].append(action)
        steps[F.REWARD].append(reward)
        steps[F.SUCCESS].append(info["success"])
        steps[F.NEAR_OBJECT].append(info["near_object"])
        steps[F.GRASPED].append(info["grasped"])
        obs = next_obs
        if info["success"]:
            success = True
            break
        if truncated:
            break
    features = dataset_features(env.config.image_size)
    frames = {key: np.asarray(values, dtype=frame_dtype(key, features[key])) for key, values in steps.items()}
    return ExpertEpisode(env.config.task, attempt, seed, frames, success,
                         bool(frames[F.NEAR_OBJECT].any()), bool(frames[F.GRASPED].any()))


# Worker side: one env per task per process, created on first use.
_WORKER_ENVS: dict[tuple, MetaWorldRGBDEnv] = {}


def _collect_in_worker(job: tuple[dict, int, int, float]) -> ExpertEpisode:
    env_fields, seed, attempt, action_noise = job
    key = tuple(sorted(env_fields.items()))
    if key not in _WORKER_ENVS:
        _WORKER_ENVS[key] = MetaWorldRGBDEnv(EnvConfig(**env_fields))
    return run_expert_episode(_WORKER_ENVS[key], seed, attempt, action_noise)


@dataclass
class TaskSummary:
    attempted: int = 0
    succeeded: int = 0
    kept: int = 0
    dropped: int = 0
    frames: int = 0


@dataclass
class CollectSummary:
    out: str
    tasks: dict[str, TaskSummary] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def frames(self) -> int:
        return sum(t.frames for t in self.tasks.values())

    @property
    def expert_success_rate(self) -> float:
        attempted = sum(t.attempted for t in self.tasks.values())
        return sum(t.succeeded for t in self.tasks.values()) / attempted if attempted else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "seconds": self.seconds, "frames": self.frames,
                "expert_success_rate": self.expert_success_rate,
                "tasks": {name: asdict(t) for name, t in self.tasks.items()}}

    def table(self) -> str:
        lines = [f"{'task':28s} {'attempted':>9s} {'succeeded':>9s} {'kept':>5s} {'dropped':>7s} {'frames':>7s}"]
        for name, t in self.tasks.items():
            lines.append(f"{name:28s} {t.attempted:9d} {t.succeeded:9d} {t.kept:5d} {t.dropped:7d} {t.frames:7d}")
        fps = self.frames / self.seconds if self.seconds > 0 else float("nan")
        lines.append(f"expert success {100 * self.expert_success_rate:.1f}% of attempts this run; "
                     f"{self.frames} frames in {self.seconds:.1f} s ({fps:.1f} frames/s) -> {self.out}")
        return "\n".join(lines)


def _attempt_batches(config: CollectConfig, task: str, start_attempt: int,
                     done: int) -> Iterator[list[tuple[dict, int, int, float]]]:
    """Attempts of one task in batches of exactly as many as are still missing.

    Batches, not one long stream: a pool consumes its whole input at once, and attempts submitted
    beyond what is needed would keep the workers busy after the task is complete.
    """
    env_fields = asdict(config.env_config(task))
    limit = config.first_attempt + max(int(config.episodes * config.max_attempts_factor), config.episodes + 1)
    attempt = start_attempt
    while done < config.episodes and attempt < limit:
        batch = list(range(attempt, min(attempt + config.episodes - done, limit)))
        done = yield [(env_fields, episode_seed(task, a), a, config.action_noise) for a in batch]
        attempt = batch[-1] + 1


def _single_threaded_renderer() -> None:
    # Mesa's software renderer starts a thread per core; with one simulator per core they only contend.
    os.environ["LP_NUM_THREADS"] = "1"


# The episodes table is written last, once an episode is whole (EpisodeWriter._write_meta): a new dataset
# without it holds no finished episode, and a run that fails then removes it whole.
@writes_to_out("stvla collect", finished=(EPISODES_META_PATH,), check_out=check_new_dataset_folder)
def collect(config: CollectConfig, progress: bool = True) -> CollectSummary:
    """Collect `config.episodes` expert episodes per task into `config.out` (see CollectConfig)."""
    tasks = config.task_list()
    if config.episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {config.episodes}")
    if config.workers < 1:
        raise ValueError(f"workers must be >= 1, got {config.workers}")
    if not 1.0 <= config.max_attempts_factor < math.inf:
        raise ValueError(f"--max_attempts_factor must be a finite number >= 1, got {config.max_attempts_factor}")
    if not 0.0 <= config.action_noise <= 1.0:
        raise ValueError(f"action_noise must be in [0, 1] (std in action units), got {config.action_noise}")
    depth_format = config.depth_format
    if config.resume and (Path(config.out) / "meta" / "info.json").is_file():
        depth_format = stored_depth_format(EpisodeStore(config.out).info["features"].get(F.DEPTH, {}), depth_format)
    features = dataset_features(config.image_size, config.depth_model, depth_format, config.depth_max)
    writer = EpisodeWriter.create_or_resume(config.out, FPS, features, ROBOT_TYPE, resume=config.resume)
    done = Counter(row["env_task"] for row in writer.episodes)
    next_attempt = {task: 1 + max((row["attempt"] for row in writer.episodes if row["env_task"] == task),
                                  default=config.first_attempt - 1)
                    for task in tasks}
    summary = CollectSummary(config.out, {task: TaskSummary() for task in tasks})
    started = time.perf_counter()
    bar = tqdm(total=config.episodes * len(tasks), initial=sum(min(done[t], config.episodes) for t in tasks),
               desc="collect", unit="ep", disable=not progress, dynamic_ncols=True)
    # Spawned (not forked) workers: a forked process would inherit the parent's OpenGL state.
    pool = (mp.get_context("spawn").Pool(config.workers, initializer=_single_threaded_renderer)
            if config.workers > 1 else None)
    try:
        for task in tasks:
            if done[task] >= config.episodes:
                continue
            for episode in _rollouts(pool, _attempt_batches(config, task, next_attempt[task], done[task]), done, task):
                stats = summary.tasks[task]
                stats.attempted += 1
                stats.succeeded += episode.success
                if episode.success or config.keep_failures:
                    # The parquet writer's errors name no file (a full disk): the dataset is named then.
                    with naming_the_file(config.out):
                        writer.add_episode(episode.frames, instruction_of(task), {
                            "env_task": task, "seed": episode.seed, "attempt": episode.attempt,
                            "success": episode.success, "near_object": episode.reached_near_object,
                            "grasped": episode.reached_grasp,
                        })
                    stats.kept += 1
                    stats.frames += episode.length
                    done[task] += 1
                    bar.update(1)
                else:
                    stats.dropped += 1
                bar.set_postfix(task=task, expert_success=f"{stats.succeeded}/{stats.attempted}")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    summary.seconds = time.perf_counter() - started
    short = {task: done[task] for task in tasks if done[task] < config.episodes}
    if short:  # what was kept is in the dataset; a run that asked for more must not look complete
        counts = ", ".join(f"{task} {kept} of {config.episodes}" for task, kept in short.items())
        raise ValueError(f"{config.out}: kept fewer expert episodes than asked ({counts}; the rest failed within "
                         f"--max_steps {config.max_steps} after {config.max_attempts_factor:g}x the attempts): raise "
                         f"--max_steps or --max_attempts_factor, or --keep_failures")
    return summary


def _rollouts(pool, batches, done: Counter, task: str) -> Iterator[ExpertEpisode]:
    """Run batches of attempts (in a pool if given) and yield episodes in attempt order."""
    try:
        batch = next(batches)
        while True:
            # Ordered results, whatever the worker count: episode indices are reproducible.
            yield from (pool.imap(_collect_in_worker, batch) if pool else map(_collect_in_worker, batch))
            batch = batches.send(done[task])
    except StopIteration:
        return


def dataset_summary(root: str | Path, data: DataConfig | None = None) -> dict[str, Any]:
    """What `stvla info` prints: episodes, frames, tasks, features, expert success rate, and which features
    training reads as the camera, depth and intrinsics under the dataset options `data`."""
    store = EpisodeStore(root)
    store.verify()
    episodes = store.episodes
    per_task: dict[str, dict[str, Any]] = {}
    if len(episodes):
        for task, group in episodes.groupby(episodes["env_task"] if "env_task" in episodes else
                                            episodes["tasks"].map(lambda t: t[0])):
            per_task[str(task)] = {"episodes": int(len(group)), "frames": int(group["length"].sum()),
                                   "success_rate": float(group["success"].mean()) if "success" in group else None}
    success = float(episodes["success"].mean()) if "success" in episodes and len(episodes) else None
    return {
        "root": str(root), "codebase_version": store.info["codebase_version"], "robot_type": store.info["robot_type"],
        "fps": store.fps, "episodes": store.num_episodes, "frames": store.num_frames, "tasks": store.tasks,
        "per_task": per_task, "success_rate": success,
        "features": {k: {"dtype": f["dtype"], "shape": f["shape"], "depth": is_depth_feature(k, f)}
                     for k, f in store.info["features"].items()},
        "roles": _default_roles(store, data or DataConfig()),
    }


def _default_roles(store: EpisodeStore, data: DataConfig) -> dict[str, Any]:
    """Which features training would read as the camera, depth and intrinsics under `data` (or why not)."""
    try:
        roles = resolve_roles(store.info["features"], data, str(store.root))
    except ValueError as error:
        return {"error": str(error)}
    recorded = F.INTRINSICS if F.INTRINSICS in store.info["features"] else None
    return {"camera": roles.stored[F.RGB], "depth": roles.stored.get(F.DEPTH),
            "intrinsics": recorded or ("given" if roles.intrinsics is not None else None)}
