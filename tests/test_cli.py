"""The command line: collect, info and view on a small dataset; clear errors on bad input."""

import json

import numpy as np

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
    assert "episodes     4" in printed and "training reads: camera observation.images.rgb, depth observation.depth" in printed


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


def test_trace_writes_three_panels_with_traces(small_dataset, tmp_path, capsys):
    root, _ = small_dataset
    out = tmp_path / "trace.mp4"
    # Episode 2 is pick-place: the arm moves, so adaptive traces appear.
    assert main(["trace", str(root), "--episode", "2", "--variant", "B", "--adaptive", "--out", str(out)]) == 0
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

    assert main(["trace", str(root), "--variant", "D", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "valid: A, B, C" in capsys.readouterr().err
    assert main(["trace", str(root), "--buffer", "1", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "buffer_length" in capsys.readouterr().err


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
