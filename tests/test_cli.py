"""The command line: collect, info and view on a small dataset; clear errors on bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stvla.cli import main
from stvla.data.video import read_video


def test_info_reports_the_dataset(small_dataset, capsys):
    root, _ = small_dataset
    assert main(["info", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 4 and summary["per_task"]["reach-v3"]["episodes"] == 2
    assert summary["success_rate"] == 1.0
    depth = summary["features"]["observation.depth"]
    assert (depth["dtype"], depth["shape"], depth["depth"]) == ("video", [64, 64, 1], True)  # LeRobot's depth
    assert summary["roles"] == {"camera": "observation.images.rgb", "depth": "observation.depth",
                                "intrinsics": "observation.camera.intrinsics"}
    assert main(["info", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "episodes     4" in printed and "stvla train would read:" in printed
    assert "depth    observation.depth, intrinsics observation.camera.intrinsics: every policy type can train" in printed


def test_view_writes_rgb_beside_depth(small_dataset, tmp_path):
    root, summary = small_dataset
    out = tmp_path / "episode.mp4"
    assert main(["view", str(root), "--episode", "1", "--out", str(out)]) == 0
    video = read_video(out)
    assert video.shape[1:] == (256, 512, 3)
    from stvla.data import EpisodeStore

    assert len(video) == EpisodeStore(root).episode_length(1)
    left, right = video[:, :, :256].astype(int), video[:, :, 256:].astype(int)
    assert np.abs(left - right).mean() > 10  # two different panels, not one image twice


def test_collect_command_and_errors(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["collect", "--task", "reach-v3", "--episodes", "1", "--image_size", "64", "--out", str(out)]) == 0
    assert "reach-v3" in capsys.readouterr().out
    assert main(["collect", "--task", "reach", "--out", str(tmp_path / "e")]) == 2
    assert "valid tasks" in capsys.readouterr().err
    assert main(["collect", "--task", "reach-v3", "--image_size", "100", "--out", str(tmp_path / "f")]) == 2
    assert "valid sizes" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "info.json is missing" in capsys.readouterr().err
    assert main(["view", str(out), "--episode", "5", "--out", str(tmp_path / "v.mp4")]) == 2
    assert "out of range" in capsys.readouterr().err
    # A resume with another image size names what differs.
    assert main(["collect", "--task", "reach-v3", "--episodes", "2", "--image_size", "96", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "[64, 64, 3]" in err and "[96, 96, 3]" in err and " there, " in err
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists(), "refused runs leave no folder"


def test_trace_writes_three_panels_with_traces(small_dataset, tmp_path, capsys):
    root, _ = small_dataset
    out = tmp_path / "trace.mp4"
    # Episode 2 is pick-place: the arm moves, so adaptive traces appear.
    # The settings spelled as on `stvla train`.
    assert main(["trace", str(root), "--episode", "2", "--traces.variant", "B", "--traces.selection.adaptive",
                 "--out", str(out)]) == 0
    video = read_video(out).astype(int)
    assert video.shape[1:] == (256, 768, 3)
    # Below the panel titles (which differ): the depth panel and the traced depth panel.
    depth_panel, traced_panel = video[:, 24:, 256:512], video[:, 24:, 512:]
    changed = np.abs(depth_panel - traced_panel).max(axis=(1, 2, 3)) > 60
    assert changed[:5].sum() == 0  # no traces during the first steps
    assert changed.sum() >= 5  # later, the traces show in the traced depth panel

    # A plain video file: RGB only, one panel.
    plain = tmp_path / "plain.mp4"
    assert main(["trace", str(out), "--buffer", "7", "--out", str(plain)]) == 0
    assert read_video(plain).shape == video.shape  # the same frames, traced again (RGB panel only)

    # The spellings this command took before (--variant, --tracker.buffer_length, --buffer) still set the same.
    assert main(["trace", str(root), "--variant", "D", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "valid: A, B, C" in capsys.readouterr().err
    assert main(["trace", str(root), "--tracker.buffer_length", "1", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "buffer_length" in capsys.readouterr().err
    assert main(["trace", str(root), "--traces.tracker.buffer_length", "1", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "buffer_length" in capsys.readouterr().err


FIXTURES = Path(__file__).parent / "fixtures" / "lerobot-0.6.1"  # written by LeRobot 0.6.1 (see its README)


@pytest.mark.parametrize("name, options, frames, panels", [
    ("rgb_7d", [], 20, 1),  # no depth: the traces on RGB
    ("depth_video", ["--fov", "60"], 20, 3),  # LeRobot's depth video: its panels too
    ("so101_joints_2cam", ["--camera", "observation.images.wrist"], 50, 1),  # one of two cameras
    ("franka_640x480_depth", [], 50, 3),  # 480x640, depth without intrinsics
])
def test_trace_and_view_read_any_lerobot_dataset(name, options, frames, panels, tmp_path):
    for command, count in (("trace", panels), ("view", min(panels, 2))):
        out = tmp_path / f"{command}.mp4"
        assert main([command, str(FIXTURES / name), "--episode", "1", *options, "--out", str(out)]) == 0
        video = read_video(out)
        height, width = (480, 640) if name.startswith("franka") else (1, 1)  # panels keep the camera's aspect
        assert video.shape[:2] == (frames, 256) and abs(video.shape[2] - count * 256 * width / height) <= 2 * count


def test_a_bad_camera_names_the_dataset_cameras(tmp_path, capsys):
    out = str(tmp_path / "x.mp4")
    for command in ("trace", "view"):
        so101 = str(FIXTURES / "so101_joints_2cam")
        assert main([command, so101, "--camera", "observation.images.side", "--out", out]) == 2
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1
        assert "observation.images.front" in error and "observation.images.wrist" in error
    # The camera options choose a dataset's features: a plain video file has none to choose.
    plain = FIXTURES / "rgb_7d" / "videos" / "observation.images.front" / "chunk-000" / "file-000.mp4"
    assert main(["trace", str(plain), "--camera", "observation.images.front", "--out", out]) == 2
    assert "is a video file" in capsys.readouterr().err


def info_training(capsys, *argv: str, status: int = 0) -> dict[str, str]:
    """The plan `stvla info --json` gives; `status` 2 where it says training would refuse the dataset."""
    assert main(["info", *argv, "--json"]) == status
    captured = capsys.readouterr()
    assert ("stvla train would refuse this dataset: " in captured.err) == bool(status)
    return json.loads(captured.out)["training"]


def test_info_says_what_training_would_do_with_any_lerobot_dataset(tmp_path, capsys):
    plan = info_training(capsys, str(FIXTURES / "rgb_7d"))
    assert plan["data"].startswith("checked: 3 episodes' rows in time order")
    assert plan["action"].startswith("7 values (dx dy dz droll dpitch dyaw gripper) -> end effector (ee): "
                                      "SpatialVLA's adaptive action grid")
    assert plan["cameras"] == "observation.images.front 96x96, read as it is; the model reads 96x96"
    assert plan["depth"].startswith("none: tracevla trains on RGB only") and "st cannot" in plan["depth"]
    assert plan["state"] == "observation.state, 7 values"

    plan = info_training(capsys, str(FIXTURES / "depth_video"))
    assert plan["depth"].startswith("observation.images.front_depth, no intrinsics: give --fov DEGREES or --intrinsics")
    assert info_training(capsys, str(FIXTURES / "depth_video"), "--fov", "90")["depth"] == (
        "observation.images.front_depth, intrinsics given: fx,fy,cx,cy 48,48,47.5,47.5: every policy type can train")

    # Two cameras and joints: training refuses until --camera chooses; info says so, and the rest still.
    so101 = str(FIXTURES / "so101_joints_2cam")
    plan = info_training(capsys, so101, status=2)  # stvla info exits 2 where stvla train would refuse
    assert plan["cameras"].startswith("refused: ") and "--camera" in plan["cameras"]
    assert "observation.images.front" in plan["cameras"] and "observation.images.wrist" in plan["cameras"]
    assert "joints (joint): per-dimension bins, gripper dims [5]" in plan["action"]
    assert plan["state"] == "observation.state, 6 values"
    plan = info_training(capsys, so101, "--camera", "observation.images.front,observation.images.wrist")
    assert plan["cameras"] == ("observation.images.front 224x224, read as it is; observation.images.wrist 224x224, "
                               "read as it is; the model reads 224x224")

    # 480x640: fitted to the model's square, as --image_fit says.
    franka = str(FIXTURES / "franka_640x480_depth")
    assert info_training(capsys, franka)["cameras"].startswith(
        "observation.images.front 480x640 -> 128x128 (--image_fit crop: the centred 480x480 square, resized)")
    padded = info_training(capsys, franka, "--image_fit", "pad")["cameras"]
    assert "--image_fit pad: padded with zeros to 640x640" in padded
    assert info_training(capsys, franka)["state"] == "observation.state, 8 values"

    # An action training refuses (joint names read as an end effector): the refusal, not an error.
    refused = tmp_path / "joints_as_ee"
    shutil.copytree(FIXTURES / "rgb_7d", refused)
    info = json.loads((refused / "meta" / "info.json").read_text())
    info["features"]["action"]["names"] = [f"joint_{i}" for i in range(7)]
    (refused / "meta" / "info.json").write_text(json.dumps(info))
    plan = info_training(capsys, str(refused), "--action_layout", "ee", status=2)
    assert plan["action"].startswith("refused: ") and "joint_0" in plan["action"]
    assert main(["info", str(refused), "--action_layout", "ee"]) == 2
    printed = capsys.readouterr().out
    assert "stvla train would read:\n  data     checked: " in printed and "\n  action   refused: " in printed
    assert "  state    observation.state, 7 values" in printed


def test_every_command_prints_its_help(capsys):
    import pytest

    from stvla.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"collect", "train", "eval", "bench"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0, name
        assert "usage: " in capsys.readouterr().out, name


def test_options_are_never_guessed_and_one_setting_takes_one_value(capsys):
    """A prefix is not an option (`--episode` on eval is not `--episodes`), and two spellings of one
    setting given different values are refused rather than the last silently kept."""
    from stvla.cli import build_parser

    parser = build_parser()
    for argv, needle in [(["eval", "--policy", "p", "--episode", "3"], "unrecognized arguments: --episode 3"),
                         (["trace", "d", "--out", "x.mp4", "--variant", "A", "--traces.variant", "C"],
                          "--variant and --traces.variant are one setting (traces.variant) given two values"),
                         (["train", "--cache_dir", "a", "--data.cache_dir", "b"],
                          "--cache_dir and --data.cache_dir are one setting (data.cache_dir)"),
                         (["depth", "d", "--model", "a", "--depth_model", "b"], "--model and --depth_model"),
                         # the first spelling repeated after the second agreed with it
                         (["train", "--variant", "C", "--traces.variant", "C", "--variant", "A"],
                          "--traces.variant and --variant are one setting")]:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2 and needle in capsys.readouterr().err, argv
    # The same value under both spellings is one setting given once; the old spelling still works alone.
    args = parser.parse_args(["trace", "d", "--out", "x.mp4", "--variant", "C", "--traces.variant", "C"])
    assert vars(args)["traces.variant"] == "C"
    assert vars(parser.parse_args(["depth", "d", "--model", "m"]))["depth_model"] == "m"
    assert vars(parser.parse_args(["train", "--steps", "5", "--steps", "7"]))["steps"] == 7  # one spelling: the last
