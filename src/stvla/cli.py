"""The `stvla` command line: a thin layer over library functions a user can also call from Python.

    stvla collect --task pick-place-v3 --episodes 50 --out DIR [--workers 2] [--resume]
    stvla info DIR [--camera KEY --fov 60 --image_fit pad]   (and what stvla train would do with it)
    stvla depth DIR --depth_model DEPTH_MODEL_DIR [--fov 60] [--out NEW]
    stvla view DIR --episode K --out FILE.mp4 [--camera KEY --depth KEY]
    stvla trace DIR|VIDEO --episode K --traces.variant C --traces.tracker.buffer_length 30 --out FILE.mp4 [--camera KEY ...]
    stvla train --policy st --dataset DIR [--init CKPT] [--lora.rank 32]
    stvla eval --policy CKPT --tasks pick-place-v3,push-v3 --episodes 50 --out DIR
    stvla serve --policy CKPT [--host 0.0.0.0 --token_file FILE] [--port 8765]
    stvla eval --server ws://HOST:PORT --tasks pick-place-v3 --episodes 50 --out DIR
    stvla report DIR          (an evaluation or a training run -> DIR/report.html)
    stvla bench [--quick]
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import sys
from typing import TYPE_CHECKING, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")

from stvla.config import add_config_arguments, add_option_aliases, config_from_arguments, field_paths  # noqa: E402

if TYPE_CHECKING:  # imported where used: `stvla --help` stays quick
    from stvla.data.roles import DataConfig


# Dataset options that change what the model reads, not which features are which: a video for people
# shows the camera as recorded.
ONLY_FOR_THE_MODEL = ("cache_dir", "image_fit")


def _collect(args: argparse.Namespace) -> int:
    from stvla.data import CollectConfig, collect

    config = config_from_arguments(CollectConfig, args)
    summary = collect(config)
    print(summary.table())
    return 0


def _info(args: argparse.Namespace) -> int:
    from stvla.data import dataset_summary
    from stvla.train.plan import training_plan

    data = _data_config(args)
    summary = dataset_summary(args.dataset, data)
    summary["training"] = training_plan(args.dataset, data, args.action_layout)
    refused = next((line for line in summary["training"].values() if line.startswith("refused: ")), None)
    if args.json:
        print(json.dumps(summary, indent=2))
        return _refused_by_training(refused)
    success = summary["success_rate"]
    print(f"dataset      {summary['root']} (LeRobot {summary['codebase_version']}, robot {summary['robot_type']}, "
          f"{summary['fps']} fps)")
    print(f"episodes     {summary['episodes']}")
    print(f"frames       {summary['frames']}")
    print(f"success rate {'n/a' if success is None else f'{100 * success:.1f}%'} (expert, over kept episodes)")
    print("tasks:")
    for task, row in summary["per_task"].items():
        rate = "n/a" if row["success_rate"] is None else f"{100 * row['success_rate']:.0f}%"
        print(f"  {task:28s} {row['episodes']:5d} episodes {row['frames']:7d} frames  success {rate}")
    print("features:")
    for key, feature in summary["features"].items():
        print(f"  {key:32s} {feature['dtype']:8s} {feature['shape']}" + ("  (depth, metres)" if feature["depth"] else ""))
    print("stvla train would read:")
    for part, line in summary["training"].items():
        print(f"  {part:8s} {line}")
    return _refused_by_training(refused)


def _refused_by_training(refused: str | None) -> int:
    """`stvla info`'s exit status where `stvla train` would refuse: 2 with training's own refusal on stderr, as
    for a dataset refused while it is opened (one status for every refusal)."""
    if refused is None:
        return 0
    print(f"stvla info: error: stvla train would refuse this dataset: {refused.removeprefix('refused: ')}",
          file=sys.stderr)
    return 2


def _depth(args: argparse.Namespace) -> int:
    import dataclasses

    from stvla.data.add_depth import DepthConfig, add_depth

    config = config_from_arguments(DepthConfig, args)
    if args.dataset_path:
        config = dataclasses.replace(config, dataset=args.dataset_path)
    print(f"depth added: {add_depth(config)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from stvla.serve.server import ServeConfig, serve

    serve(config_from_arguments(ServeConfig, args))
    return 0


def _report(args: argparse.Namespace) -> int:
    from stvla.report import write_report

    print(f"wrote {write_report(args.directory)}")
    return 0


def _data_config(args: argparse.Namespace) -> "DataConfig":
    """The dataset options (--camera, --depth, --intrinsics, --fov) given to a command, as a DataConfig."""
    from stvla.data.roles import DataConfig

    return config_from_arguments(DataConfig, args, prefix="data.")


def _view(args: argparse.Namespace) -> int:
    from stvla.data.view import render_episode_video

    out = render_episode_video(args.dataset, args.episode, args.out, data=_data_config(args))
    print(f"wrote {out}")
    return 0


def _trace(args: argparse.Namespace) -> int:
    from stvla.data.view import render_trace_video
    from stvla.traces import TraceConfig

    config = config_from_arguments(TraceConfig, args, prefix="traces.")
    out = render_trace_video(args.source, args.out, config, episode=args.episode, data=_data_config(args))
    print(f"wrote {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from stvla.train import TrainConfig, train

    policy_dir = train(config_from_arguments(TrainConfig, args))
    print(f"policy saved to {policy_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from stvla.evaluate import EvalConfig, evaluate

    config = config_from_arguments(EvalConfig, args)
    info = evaluate(config)
    print(f"{'task':28s} {'episodes':>8s}  {'success [95% CI]':>20s}  {'sub-goal':>8s}")
    for task, row in [*info["per_task"].items(), ("overall", info["overall"])]:
        low, high = row["ci95"]
        print(f"{task:28s} {row['episodes']:8d}  {100 * row['success_rate']:5.1f}% [{100 * low:4.1f}, {100 * high:5.1f}]"
              + (f"  {100 * row['subgoal_rate']:7.1f}%" if row["subgoal_rate"] is not None else "       n/a"))
    overall = info["overall"]
    if overall.get("trace_step_share") is not None:
        share, pixels, moved = (overall[k] for k in ("trace_step_share", "traced_pixel_share", "trace_sensitivity"))
        tokens = overall.get("trace_token_change")
        print(f"traces: on {100 * share:.0f}% of steps, {100 * (pixels or 0):.2f}% of the input's pixels (or trace "
              f"tokens) when drawn" + ("" if tokens is None else f", {100 * tokens:.2f}% of the tokens they reach "
                                                                 f"(relative L2)")
              + "; action change without them: " + ("n/a" if moved is None else
                                                 f"{moved:.4f} (mean L2 per action; actions {overall['action_norm']:.3f})"))
    videos = [e["video"] for e in info["episodes"] if e["video"]]
    print(f"results: {config.out}/eval_info.json" + (f"; a video: {videos[0]}" if videos else ""))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from stvla.benchmark.protocol import BenchConfig, quick_preset, run_bench

    # --quick starts from the reduced protocol; any other option given still overrides it.
    base = quick_preset() if getattr(args, "quick", False) else None
    config = config_from_arguments(BenchConfig, args, base=base)
    results = run_bench(config)
    targets = ", ".join(results["targets"]) or "not chosen yet (the selection is still running)"
    print(f"target tasks: {targets}; results in {config.results_dir}")
    return 0


def add_data_options(parser: argparse.ArgumentParser, leave_out: tuple[str, ...] = ("cache_dir",)) -> None:
    """`stvla train`'s dataset options by their short names (--camera, --depth, --intrinsics, --fov, ...),
    into the same DataConfig: a command on a dataset reads the features training would read."""
    from stvla.config import field_comments
    from stvla.data.roles import DataConfig
    from stvla.train.trainer import DATA_OPTIONS, TrainConfig

    comments = field_comments(DataConfig)
    for name, path in DATA_OPTIONS.items():
        if name not in leave_out:
            # add_option_aliases formats the help ({new}) and argparse %-substitutes it: both escaped.
            comment = comments.get(path.split(".")[-1], "").replace("%", "%%").replace("{", "{{").replace("}", "}}")
            help_text = f"{comment} (as in stvla train)"
            add_option_aliases(parser, TrainConfig, {name: path}, help_text)


def build_parser() -> argparse.ArgumentParser:
    from stvla.data.collect import CollectConfig
    from stvla.policies.action_layout import LAYOUTS
    from stvla.traces import TraceConfig
    from stvla.train.trainer import DATA_OPTIONS, LEGACY_TRACE_OPTIONS, TrainConfig

    # allow_abbrev=False: a prefix such as `--episode` must not silently stand for `--episodes`.
    parser = argparse.ArgumentParser(prog="stvla", description="Visual traces for vision-language-action policies.",
                                     allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands = functools.partial(subparsers.add_parser, allow_abbrev=False)

    collect = commands("collect", help="collect scripted-expert demonstrations into a LeRobot v3 dataset")
    add_config_arguments(collect, CollectConfig)
    collect.set_defaults(run=_collect)

    info = commands("info", help="summarise a dataset (episodes, frames, tasks, features, success) "
                                            "and say what stvla train would do with it")
    info.add_argument("dataset", help="dataset directory")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.add_argument("--action_layout", default="", choices=("", *LAYOUTS),
                      help="as in stvla train: ee, joint, or '' (from the action's names)")
    add_data_options(info)
    info.set_defaults(run=_info)

    report = commands("report", help="one HTML page for an evaluation, a training run or benchmark results (DIR/report.html)")
    report.add_argument("directory", help="an evaluation's --out, a training run's --out, or benchmarks/results")
    report.set_defaults(run=_report)

    from stvla.data.add_depth import DepthConfig

    depth = commands("depth", help="add an estimated metric depth stream to a dataset without depth")
    depth.add_argument("dataset_path", nargs="?", default="", help="dataset directory (or --dataset DIR)")
    add_config_arguments(depth, DepthConfig)
    # Spelled as on `stvla collect` and `stvla eval`; this command's names before, kept for one release.
    add_option_aliases(depth, DepthConfig, {"model": "depth_model", "device": "depth_device"})
    depth.set_defaults(run=_depth)

    view = commands("view", help="render an episode as RGB beside colour-mapped depth (mp4)")
    view.add_argument("dataset", help="dataset directory")
    view.add_argument("--episode", type=int, default=0, help="episode index (default: 0)")
    view.add_argument("--out", required=True, help="output .mp4 path")
    add_data_options(view, leave_out=ONLY_FOR_THE_MODEL)
    view.set_defaults(run=_view)

    trace = commands("trace", help="video of the online tracer along an episode or a video file")
    trace.add_argument("source", help="dataset directory, or a plain video file (RGB only)")
    trace.add_argument("--episode", type=int, default=0, help="episode index in a dataset (default: 0)")
    trace.add_argument("--out", required=True, help="output .mp4 path")
    # The trace settings spelled as on `stvla train` (--traces.variant); the spellings this command took
    # before (--variant, --tracker.buffer_length, --buffer, --adaptive) kept for one release.
    add_config_arguments(trace, TraceConfig, prefix="traces.")
    add_option_aliases(trace, TraceConfig, {**{path: path for path in field_paths(TraceConfig)},
                                            "buffer": "tracker.buffer_length", "adaptive": "selection.adaptive"},
                       prefix="traces.")
    add_data_options(trace, leave_out=ONLY_FOR_THE_MODEL)
    trace.set_defaults(run=_trace)

    train = commands("train", help="train a policy (stage 1), or LoRA fine-tune one (stage 2, --init)")
    add_config_arguments(train, TrainConfig)
    add_option_aliases(train, TrainConfig, LEGACY_TRACE_OPTIONS)
    add_option_aliases(train, TrainConfig, DATA_OPTIONS, "short for --{new}")
    train.set_defaults(run=_train)

    from stvla.evaluate import EvalConfig

    evaluation = commands("eval", help="closed-loop evaluation of a policy on held-out seeds")
    add_config_arguments(evaluation, EvalConfig)
    evaluation.set_defaults(run=_eval)

    from stvla.serve.server import ServeConfig

    serving = commands("serve", help="serve a policy over a websocket to a robot (or stvla eval --server)")
    add_config_arguments(serving, ServeConfig)
    serving.set_defaults(run=_serve)

    from stvla.benchmark.protocol import BenchConfig

    bench = commands("bench", help="the paper-reproduction benchmark, end to end, cached and resumable")
    add_config_arguments(bench, BenchConfig)
    bench.set_defaults(run=_bench)
    return parser


# What a plain OSError means for a path given on the command line.
OS_ERROR_HINTS = {FileExistsError: "a file stands where a folder is needed: remove it or choose another path",
                  NotADirectoryError: "a file stands where a folder is needed: remove it or choose another path",
                  IsADirectoryError: "a folder stands where a file is needed: remove it or choose another path",
                  PermissionError: "not allowed: choose a path you can write",
                  FileNotFoundError: "nothing is there, or a folder on the way is missing or takes no new files: "
                                     "check the path"}


# What a write that failed for want of room means, by errno (an OSError of no type of its own).
FULL_DISK_HINTS = {errno.ENOSPC: "the disk is full: free some space there, or write elsewhere",
                   errno.EDQUOT: "your disk quota is used up: free some space there, or write elsewhere"}


def reporting_errors(prog: str, run: Callable[[], int | None]) -> int:
    """Run `run`; bad input, a busy folder or a missing file ends it with one line naming it, status 2."""
    from stvla.data.store import DatasetError
    from stvla.locks import FolderInUse

    try:
        return run() or 0
    except (DatasetError, FolderInUse, ValueError, OSError, KeyError, IndexError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if type(error) in OS_ERROR_HINTS and error.filename:  # the path first, and what stands in the way
            # A rename's target is its second path: what stands in the way, not the temporary file renamed.
            in_the_way = type(error) in (FileExistsError, NotADirectoryError, IsADirectoryError) and error.filename2
            message = f"{error.filename2 if in_the_way else error.filename}: {error.strerror} " \
                      f"({OS_ERROR_HINTS[type(error)]})"
        elif isinstance(error, OSError) and error.errno in FULL_DISK_HINTS and error.filename:
            # os.strerror: a library's own wording ("Error writing bytes to file. Detail: ...") says less
            message = f"{error.filename}: {os.strerror(error.errno)} ({FULL_DISK_HINTS[error.errno]})"
    except RuntimeError as error:
        # pathlib's resolve() meets a symbolic link that leads back to itself (Python < 3.13; an OSError after)
        if not str(error).startswith("Symlink loop from "):
            raise
        loop = getattr(error.__context__, "filename", None) or str(error).removeprefix("Symlink loop from ")
        message = f"{loop}: a symbolic link that leads back to itself: point it at a real path, or remove it"
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # the error gets its own line, not the end of a bar's
        bar.close()
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return reporting_errors(f"stvla {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
