"""Closed-loop evaluation: a saved policy in the simulator on held-out seeds, per episode and per task.

    info = evaluate(EvalConfig(policy="runs/st/policy", tasks="pick-place-v3,push-v3", episodes=50))

Outputs in `out/`:
    eval_config.json        this evaluation's settings
    episodes.jsonl          one line per finished episode, appended as it finishes (the resume log)
    eval_info.json          per episode, per task and overall: success and sub-goal rates, 95% intervals
                            (and for LLARVA the predicted trace's error in pixels)
    success_by_task.png     per-task success with the intervals
    videos/<task>-ep<k>-<success|failure>.mp4   RGB with the policy's traces | the depth it encoded

Seeds come from `episode_seed(task, attempt, "eval")`, disjoint from every training seed (`--split
train` replays the starts a collection drew instead: success there against held-out success tells
memorising from generalising). An interrupted evaluation keeps its finished episodes and a second
call runs only the missing ones.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from stvla import features as F
from stvla import geometry
from stvla.config import KEY_NEUTRAL, save_config
from stvla.data.video import VIEWING, write_video
from stvla.devices import torch_device
from stvla.envs import MetaWorldRGBDEnv, episode_seed, has_subgoal, make_env, parse_tasks
from stvla.evaluate.stats import rate_summary
from stvla.files import naming_the_file, write_text_naming_the_file
from stvla.locks import writes_to_out
from stvla.policies.base import Policy, TraceDiagnostics, checkpoint_fingerprint
from stvla.policies.registry import load_policy
from stvla.serve.client import PolicyClient, ServedPolicy
from stvla.serve.formats import model_image_size
from stvla.traces import draw_traces_rgb
from stvla.traces.future import future_trace_targets, trace_error_px
from stvla.visualize import colorize_depth, panels


@dataclass
class EvalConfig:
    policy: str = ""  # policy checkpoint directory (the `policy/` folder written by `stvla train`)
    tasks: str = "pick-place-v3"  # comma-separated Meta-World tasks, or "mt10"
    episodes: int = 50  # evaluation episodes per task, on held-out seeds
    split: str = "eval"  # whose starts: "eval" (held-out) or "train" (the ones `stvla collect` drew: a memorisation check)
    max_steps: int = 200  # steps before an episode counts as a failure
    workers: int = 2  # processes, each with its own simulator and copy of the policy
    out: str = "runs/eval"  # output directory (resumes if it holds finished episodes)
    videos: int = 2  # episodes per task saved as video (the first ones)
    camera: str = "corner3"  # the simulator camera to render from, the one the policy was trained on: corner3, corner, topview, ... (not a dataset feature key)
    device: str = "cpu"  # torch device of each worker's policy: cpu, cuda, cuda:1, mps
    depth_model: str = ""  # local depth model checkpoint (ZoeDepth or Depth Anything V2 metric) whose estimate replaces the rendered depth ("" = rendered; runs on `device`)
    temporal_ensemble: float = 0.0  # ACT's temporal ensembling m at control, overriding the policy's (0 = the policy's own)
    remove_traces: bool = field(default=False, metadata=KEY_NEUTRAL)  # a traced policy acts on its untraced inputs (the test-time ablation)
    trace_diagnostics: bool = field(default=True, metadata=KEY_NEUTRAL)  # a traced policy: measure its traces (step share, pixel share, sensitivity: one more forward per chunk)
    server: str = field(default="", metadata=KEY_NEUTRAL)  # ws://HOST:PORT of `stvla serve`: act through it (each worker its own connection) instead of loading `policy`
    token_file: str = field(default="", metadata=KEY_NEUTRAL)  # file holding the server's token, if it asks for one

    def __post_init__(self) -> None:
        """Settings refused before anything runs (or any folder is made), one line each."""
        if self.episodes < 1 or self.workers < 1 or self.max_steps < 1:
            raise ValueError(f"episodes, workers and max_steps must be >= 1, got {self.episodes}, {self.workers}, "
                             f"{self.max_steps}")
        if self.videos < 0:
            raise ValueError(f"--videos must be >= 0, got {self.videos}")
        if not 0 <= self.temporal_ensemble < math.inf:
            raise ValueError(f"--temporal_ensemble must be a finite number >= 0 (0 = the policy's own), got "
                             f"{self.temporal_ensemble}")
        if self.server and not self.server.startswith(("ws://", "wss://")):
            raise ValueError(f"--server must be a websocket address, ws://HOST:PORT or wss://HOST:PORT, got {self.server!r}")
        if self.server and self.temporal_ensemble:
            raise ValueError("--temporal_ensemble applies to a local policy, not to one behind --server")
        if self.split not in ("eval", "train"):
            raise ValueError(f"--split must be 'eval' (held-out starts) or 'train' (the collected ones), got {self.split!r}")
        if self.policy and Path(self.out).resolve().is_relative_to(Path(self.policy).resolve()):
            raise ValueError(f"--out {self.out} is inside the checkpoint {self.policy}: write the evaluation elsewhere")

    def resume_key(self) -> dict[str, Any]:
        """What an episode's outcome depends on; a resumed run must share it. The policy enters by its
        weights and config, not its path: a moved checkpoint resumes, one retrained in place does not."""
        policy = served_metadata(self)["checkpoint"] if self.server else checkpoint_fingerprint(self.policy)
        key = {"policy": policy, "max_steps": self.max_steps, "camera": self.camera}
        if self.device != "cpu":  # another device rounds differently; CPU runs keep the key they always had
            key["device"] = self.device
        if self.depth_model:  # estimated depth is another input
            key["depth_model"] = str(Path(self.depth_model).resolve())
        if self.temporal_ensemble:  # another way of acting
            key["temporal_ensemble"] = self.temporal_ensemble
        if self.remove_traces:  # other inputs
            key["remove_traces"] = True
        if self.split != "eval":  # other starts
            key["split"] = self.split
        return key


def served_metadata(config: EvalConfig) -> dict[str, Any]:
    """What `stvla serve` at `config.server` says of its policy (it is asked once per process)."""
    if config.server not in _SERVED:
        with open_client(config) as client:
            _SERVED[config.server] = client.metadata
    return _SERVED[config.server]


_SERVED: dict[str, dict[str, Any]] = {}


def open_client(config: EvalConfig) -> PolicyClient:
    token = Path(config.token_file).read_text().strip() if config.token_file else None
    return PolicyClient(config.server, token=token)


def check_policy_fits_env(action_dim: int, state_dim: int | None, env: MetaWorldRGBDEnv, checkpoint: str) -> None:
    """A clear error when the checkpoint (`action_dim`, `state_dim`) cannot drive this environment."""
    task_actions = env.action_space.shape[0]
    task_states = env.observation_space[F.OBS_STATE].shape[0]
    if action_dim != task_actions:
        raise ValueError(f"checkpoint {checkpoint} outputs {action_dim}-D actions; task {env.config.task} "
                         f"takes {task_actions}-D actions")
    if state_dim is not None and state_dim != task_states:
        raise ValueError(f"checkpoint {checkpoint} reads a {state_dim}-D proprio state; task "
                         f"{env.config.task} gives {task_states}-D")


def video_frame(obs: dict[str, Any], policy: Policy | ServedPolicy, depth_range: tuple[float, float]) -> np.ndarray:
    """RGB with the policy's traces (if it has any) beside the depth it encodes (traced or raw); a
    LLARVA policy's predicted future path is drawn on the RGB as an arrow (where it expects to go). A
    served policy's traces come from the server's reply; its depth panel is the raw depth."""
    if isinstance(policy, ServedPolicy):
        rgb = draw_traces_rgb(obs[F.OBS_RGB], [*policy.traces, *([policy.predicted_trace]
                                                                   if policy.predicted_trace is not None else [])])
        return panels([rgb, colorize_depth(obs[F.OBS_DEPTH], *depth_range)], ["rgb + traces (served)", "depth"])
    trace = policy.processor.last_trace
    rgb = trace.traced_rgb if trace is not None else obs[F.OBS_RGB]
    if policy.predicted_trace is not None:
        rgb = draw_traces_rgb(rgb, [policy.predicted_trace])
    traced = trace is not None and policy.processor.depth_source == "traced"
    depth = trace.traced_depth if traced else obs[F.OBS_DEPTH]
    return panels([rgb, colorize_depth(depth, *depth_range)],
                  ["rgb + traces" if trace is not None else "rgb", "traced depth" if traced else "depth"])


def run_episode(policy: Policy | ServedPolicy, env: MetaWorldRGBDEnv, task: str, attempt: int, max_steps: int,
                video: Path | None, split: str = "eval") -> dict[str, Any]:
    """One closed-loop episode; success = info["success"] at any step (the episode stops there)."""
    seed = episode_seed(task, attempt, split)
    obs, _ = env.reset(seed=seed)
    policy.reset()
    success = near_object = grasped = False
    frames: list[np.ndarray] = []
    path: dict[str, list[np.ndarray]] = {F.OBS_EE_POSITION: [], F.OBS_INTRINSICS: [], F.OBS_CAMERA_POSE: []}
    predictions: dict[int, np.ndarray] = {}  # step -> predicted future trace (LLARVA)
    images: dict[int, np.ndarray] = {}  # step -> camera image, where a prediction was made (for the paths figure)
    depth = obs[F.OBS_DEPTH]
    depth_range = (float(np.percentile(depth, 1)), float(depth.max()))  # fixed per episode: stable colours
    steps = 0
    on_target = TargetTraces() if isinstance(policy, Policy) and policy.processor.tracer is not None else None
    while steps < max_steps and not success:
        action = policy.select_action(obs)
        if on_target is not None:
            on_target.observe(env, obs, policy.processor.last_trace)
        for key in path:
            path[key].append(obs[key])
        if policy.predicted_trace is not None:
            predictions[steps] = policy.predicted_trace
            if video is not None:
                images[steps] = obs[F.OBS_RGB]
        if video is not None:
            frames.append(video_frame(obs, policy, depth_range))
        obs, _, _, _, info = env.step(action)
        steps += 1
        success = bool(info["success"])
        near_object |= bool(info["near_object"])
        grasped |= bool(info["grasped"])
    # Where the actions led against where the goal (or moved object) then was: why a reach falls short.
    thing = env.moving_thing()
    goal_error = None if thing is None else float(100 * np.linalg.norm(obs[F.OBS_EE_POSITION] - thing[0]))
    written = paths_image = None
    if video is not None and frames:
        written = video.with_name(f"{video.name}-{'success' if success else 'failure'}.mp4")
        write_video(written, np.stack(frames), fps=30, settings=VIEWING)
        if predictions:
            paths_image = written.with_name(written.stem + "-paths.png")
            draw_predicted_paths(predictions, images, path, paths_image)
    return {"task": task, "attempt": attempt, "seed": seed, "success": success,
            "subgoal": (near_object or grasped) if has_subgoal(task) else None,  # None: the task defines none
            "near_object": near_object, "grasped": grasped, "steps": steps,
            "final_ee_position": [float(x) for x in obs[F.OBS_EE_POSITION]],  # where the actions led
            "final_goal_error_cm": goal_error,  # on a variant: from there to the moving goal or object
            **(diagnostics.summary() if (diagnostics := getattr(policy, "trace_diagnostics", None)) else {}),
            **(on_target.summary() if on_target is not None else {}),
            "trace_error_px": predicted_trace_error(predictions, path), "video": str(written) if written else None,
            **({"paths_image": str(paths_image)} if paths_image else {})}


class TargetTraces:
    """On a task whose goal or object moves (stvla.envs.variants), with a local traced policy: the share of
    steps on which one of the policy's traces follows the moving thing, counted apart while it is shown and
    while it is hidden (does a trace still carry it through the frames that do not show it?).

    A trace follows the thing when it ends on it (within its extent, projected) and kept the same offset
    from it at every vertex, to within TOLERANCE: a trace of the hand that reached the goal ends on it too,
    but came from elsewhere. (A trace left standing where a hidden thing vanished counts until the thing
    has moved TOLERANCE away: at 0.3 m/s the reach goal moves about 0.3 px per step at 128 px.)"""

    TOLERANCE = 0.02  # of the image width: how far a following trace's offset from the thing may wander

    def __init__(self) -> None:
        self.steps = {False: 0, True: 0}  # hidden? -> steps
        self.traced = {False: 0, True: 0}  # hidden? -> of which a trace followed the thing
        self.pixels: list[np.ndarray] = []  # the thing's pixel at every step so far, oldest first

    def observe(self, env: MetaWorldRGBDEnv, obs: dict[str, Any], trace: Any) -> None:
        """Count one step: `obs` the observation the policy acted on, `trace` its tracer's output for it (a
        TraceOutput: the traces and the tracker's window they were chosen from)."""
        thing = env.moving_thing()
        if thing is None:
            return
        position, hidden, extent = thing
        intrinsics, pose = obs[F.OBS_INTRINSICS], obs[F.OBS_CAMERA_POSE]
        self.pixels.append(geometry.project_world_points(position, intrinsics, pose))
        radius = float(intrinsics[0, 0]) * extent / float(geometry.world_to_camera(position[None], pose)[0, 2])
        tolerance = self.TOLERANCE * np.shape(obs[F.OBS_RGB])[1]
        self.steps[hidden] += 1
        self.traced[hidden] += bool(trace is not None and any(
            self.follows(t, len(trace.state.positions), radius, tolerance) for t in trace.traces))

    def follows(self, trace: Any, window: int, radius: float, tolerance: float) -> bool:
        """Whether `trace` (chosen from a tracker window of `window` frames, the last this step's) ends
        within `radius` px of the thing and kept its offset from it to within `tolerance` px."""
        ago = window - 1 - np.asarray(trace.frame_index)  # vertex k was seen ago[k] steps before this one
        if len(ago) < 2 or ago.max() >= len(self.pixels):
            return False
        offsets = np.asarray(trace.points, np.float64) - np.stack([self.pixels[-1 - int(a)] for a in ago])
        return bool(np.hypot(*offsets[-1]) <= radius
                    and (np.hypot(*(offsets - offsets[-1]).T) <= tolerance).all())

    def summary(self) -> dict[str, float | None]:
        def share(hidden: bool) -> float | None:
            return self.traced[hidden] / self.steps[hidden] if self.steps[hidden] else None

        return {"target_trace_share": share(False), "hidden_target_trace_share": share(True)}


def draw_predicted_paths(predictions: dict[int, np.ndarray], images: dict[int, np.ndarray],
                         path: dict[str, list[np.ndarray]], out: Path, count: int = 3) -> Path:
    """LLARVA's predicted future path (second colour, cyan) against the path the end effector then took
    (first colour, red), on the camera image at `count` steps spread over the episode."""
    from PIL import Image

    points = len(next(iter(predictions.values())))
    targets, masks = future_trace_targets(*(np.stack(path[key]) for key in (F.OBS_EE_POSITION, F.OBS_INTRINSICS,
                                                                             F.OBS_CAMERA_POSE)), points)
    steps = sorted(predictions)
    chosen = [steps[i] for i in sorted(set(np.linspace(0, len(steps) - 1, count).astype(int)))]
    tiles = [draw_traces_rgb(images[step], [targets[step][masks[step]], predictions[step]]) if masks[step].any()
             else draw_traces_rgb(images[step], [predictions[step]]) for step in chosen]
    Image.fromarray(panels(tiles, [f"step {step}" for step in chosen])).save(out)
    return out


def predicted_trace_error(predictions: dict[int, np.ndarray], path: dict[str, list[np.ndarray]]) -> float | None:
    """Mean pixel error of the predicted future traces against the path the end effector then took
    (from each prediction's step to the episode's end, sub-sampled as in training); None without predictions."""
    if not predictions:
        return None
    points = len(next(iter(predictions.values())))
    targets, masks = future_trace_targets(*(np.stack(path[key]) for key in (F.OBS_EE_POSITION, F.OBS_INTRINSICS,
                                                                             F.OBS_CAMERA_POSE)), points)
    return float(np.mean([trace_error_px(trace, targets[step], masks[step]) for step, trace in predictions.items()]))


# TraceDiagnostics.summary() and TargetTraces.summary()
TRACE_FIGURES = ("trace_step_share", "traced_pixel_share", "trace_sensitivity", "action_norm", "trace_token_change",
                 "target_trace_share", "hidden_target_trace_share")
# Per-episode figures averaged per task and overall (over the episodes that have them).
EPISODE_FIGURES = ("trace_error_px", "final_goal_error_cm", *TRACE_FIGURES)

# Worker side: the policy loaded once per process, one simulator per task.
_WORKER: dict[str, Any] = {}


def _start_worker(config: dict[str, Any]) -> None:
    # One thread each: the workers already fill the cores (Mesa and torch would oversubscribe them).
    os.environ["LP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    _WORKER.clear()
    try:
        eval_config = EvalConfig(**config)
        if eval_config.server:
            policy = ServedPolicy(open_client(eval_config))
        else:
            policy = load_policy(eval_config.policy).to(torch_device(eval_config.device))
            if eval_config.temporal_ensemble:
                policy.config.temporal_ensemble = eval_config.temporal_ensemble
            if policy.processor.tracer is not None:
                policy.remove_traces = eval_config.remove_traces
                policy.trace_diagnostics = TraceDiagnostics() if eval_config.trace_diagnostics else None
    except Exception as error:  # noqa: BLE001 - a pool restarts a worker whose initializer raises, forever
        _WORKER["error"] = f"{type(error).__name__}: {error}"
        return
    _WORKER.update(config=eval_config, policy=policy, envs={})


def _close_worker() -> None:
    """Close the environments and drop the policy of an in-process worker."""
    for env in _WORKER.get("envs", {}).values():
        env.close()
    _WORKER.clear()


def _episode_in_worker(job: tuple[str, int, str | None]) -> dict[str, Any]:
    if "error" in _WORKER:  # reported with the first episode, which the parent re-raises
        raise RuntimeError(f"an evaluation worker could not start: {_WORKER['error']}")
    task, attempt, video = job
    config: EvalConfig = _WORKER["config"]
    envs: dict[str, MetaWorldRGBDEnv] = _WORKER["envs"]
    if task not in envs:
        envs[task] = make_env(task, image_size=image_size_of(_WORKER["policy"]), camera=config.camera,
                              max_episode_steps=config.max_steps, depth_model=config.depth_model,
                              depth_device=config.device)
    return run_episode(_WORKER["policy"], envs[task], task, attempt, config.max_steps,
                       Path(video) if video else None, config.split)


def image_size_of(policy: Policy | ServedPolicy) -> int:
    return policy.image_size if isinstance(policy, ServedPolicy) else policy.config.vla.image_size


def read_finished(path: Path) -> list[dict[str, Any]]:
    """The episodes of an earlier call (a line cut off by a kill is dropped; it is simply run again)."""
    if not path.is_file():
        return []
    finished = []
    for line in path.read_text().splitlines():
        try:
            finished.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return finished


def has_subgoal_record(episode: dict[str, Any]) -> bool:
    """Whether an episode's sub-goal counts: its task defines one (an episode recorded before that was
    known holds False for the tasks that define none)."""
    return episode.get("subgoal") is not None and has_subgoal(episode["task"])


def summarize(episodes: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """Per task and overall: success and sub-goal counts, rates and Wilson 95% intervals (the sub-goal's
    over the episodes of tasks that have one; None where none has)."""
    def block(group: list[dict[str, Any]]) -> dict[str, Any]:
        success = rate_summary(sum(e["success"] for e in group), len(group))
        with_subgoal = [e for e in group if has_subgoal_record(e)]
        subgoal = rate_summary(sum(e["subgoal"] for e in with_subgoal), len(with_subgoal)) if with_subgoal else \
            {"success_rate": None, "ci95": None}
        def mean_of(name: str) -> float | None:  # over the episodes that have the figure
            values = [e[name] for e in group if e.get(name) is not None]
            return float(np.mean(values)) if values else None

        return {**success, "subgoal_rate": subgoal["success_rate"], "subgoal_ci95": subgoal["ci95"],
                "mean_steps": float(np.mean([e["steps"] for e in group])) if group else float("nan"),
                **{name: mean_of(name) for name in EPISODE_FIGURES}}

    return {"per_task": {task: block([e for e in episodes if e["task"] == task]) for task in tasks},
            "overall": block(episodes)}


def plot_success(per_task: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(per_task)
    rates = np.array([100 * per_task[t]["success_rate"] for t in tasks])
    low = np.array([100 * per_task[t]["ci95"][0] for t in tasks])
    high = np.array([100 * per_task[t]["ci95"][1] for t in tasks])
    fig, ax = plt.subplots(figsize=(1.2 * len(tasks) + 2, 3.4))
    ax.bar(range(len(tasks)), rates, yerr=[rates - low, high - rates], capsize=3, color="#4878a8")
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("success % (95% CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        with naming_the_file(path):
            fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


# An evaluation's finished episodes are the lines of its log: a new --out without one is removed whole.
@writes_to_out("stvla eval", finished=("episodes.jsonl",))
def evaluate(config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the evaluation and write its outputs; returns the eval_info dict."""
    tasks = parse_tasks(config.tasks)
    if config.server:
        contract = served_metadata(config)["contract"]
        image_size = model_image_size(contract)
        state = contract["input_features"].get(F.STATE)  # a policy without a state token reads none
        dims = contract["output_features"][F.ACTION]["shape"][0], state["shape"][0] if state else None
        source = f"served by {config.server}"
    else:
        torch_device(config.device)  # a clear error here, not in every worker
        policy = load_policy(config.policy)
        policy.check_can_act(config.policy)
        image_size, dims, source = policy.config.vla.image_size, (policy.config.vla.action_dim,
                                                                  policy.config.vla.state_dim), config.policy
        del policy  # only checked here: the workers load their own (a large backbone would be held twice)
    env = make_env(tasks[0], image_size=image_size, camera=config.camera, max_episode_steps=config.max_steps)
    check_policy_fits_env(*dims, env, source)
    env.close()

    out = Path(config.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    key_path, key = out / "resume_key.json", config.resume_key()
    if (out / "episodes.jsonl").is_file():
        earlier = json.loads(key_path.read_text()) if key_path.is_file() else None
        if earlier != key:
            raise ValueError(f"{out} holds episodes of another evaluation ({key_path}: {earlier}, now {key}); "
                             f"use another --out")
    write_text_naming_the_file(key_path, json.dumps(key) + "\n")
    save_config(config, out / "eval_config.json")
    log_path = out / "episodes.jsonl"
    finished = {(e["task"], e["attempt"]): e for e in read_finished(log_path)}
    jobs = [(task, attempt, str(out / "videos" / f"{task}-ep{attempt}") if attempt < config.videos else None)
            for task in tasks for attempt in range(config.episodes) if (task, attempt) not in finished]

    bar = tqdm(total=len(tasks) * config.episodes, initial=len(tasks) * config.episodes - len(jobs), desc="eval",
               unit="ep", disable=not progress, dynamic_ncols=True)
    worker_config = asdict(config)
    # In this process (one worker), the caller's thread count is restored afterwards: a training run that
    # evaluates as it goes must go on as it would have.
    threads, lp_threads = torch.get_num_threads(), os.environ.get("LP_NUM_THREADS")
    if config.workers == 1 or len(jobs) <= 1:
        _start_worker(worker_config)
        results = map(_episode_in_worker, jobs)
        pool = None
    else:
        # Spawned, not forked: a forked child would inherit the parent's OpenGL and torch thread state.
        pool = mp.get_context("spawn").Pool(min(config.workers, len(jobs)), initializer=_start_worker,
                                            initargs=(worker_config,))
        results = pool.imap_unordered(_episode_in_worker, jobs)
    completed = False
    try:
        for episode in results:
            # The log opened for each line: a write that fails (a full disk) fails once, naming the file, with the
            # lines before it whole (a file kept open would fail again as it closes, naming none).
            with naming_the_file(log_path), log_path.open("a") as log:
                log.write(json.dumps(episode) + "\n")
            finished[(episode["task"], episode["attempt"])] = episode
            bar.update(1)
            wins = sum(e["success"] for e in finished.values())
            bar.set_postfix(success=f"{wins}/{len(finished)}")
        completed = True
    finally:
        bar.close()
        if pool is not None:
            pool.close() if completed else pool.terminate()
            pool.join()
        else:
            _close_worker()
            torch.set_num_threads(threads)
            if lp_threads is None:
                os.environ.pop("LP_NUM_THREADS", None)
            else:
                os.environ["LP_NUM_THREADS"] = lp_threads

    episodes = [finished[(task, attempt)] for task in tasks for attempt in range(config.episodes)]
    info = {"config": asdict(config), **summarize(episodes, tasks), "episodes": episodes}
    plot_success(info["per_task"], out / "success_by_task.png",
                 config.server or f"{Path(config.policy).parent.name or config.policy}")
    write_text_naming_the_file(out / "eval_info.json", json.dumps(info, indent=1) + "\n")
    return info
