"""`stvla depth` on bad input (the faults probe46d found): every refusal is one line naming the file or
value, comes before anything is copied or written, and a run that fails after writing began removes what it
made, never what was there before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stvla.cli import main
from test_depth_model import tiny_depth_anything  # noqa: F401  (a fixture: a tiny Depth Anything model on disk)

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot-0.6.1" / "rgb_7d"  # RGB only, 3 episodes in one video
VIDEO = "videos/observation.images.front/chunk-000/file-000.mp4"


def tree(folder: Path) -> list[tuple[str, int, int]]:
    """Every file and folder under `folder` with its size and modification time: equal lists, nothing changed."""
    return sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                  for path in folder.rglob("*"))


def refusal(capsys, argv: list[str]) -> str:
    """Run `stvla depth argv`; it must end with status 2 and exactly one stderr line, which is returned."""
    assert main(["depth", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stvla depth: error: "), lines
    return lines[0]


def failure(capsys, argv: list[str]) -> str:
    """Run `stvla depth argv`, which fails after the progress bars began; its one error line."""
    assert main(["depth", *argv]) == 2
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("stvla depth: error: "), lines
    return lines[0]


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A copy of the RGB-only fixture in a folder of its own (tmp_path/work/rgb_7d)."""
    root = tmp_path / "work" / "rgb_7d"
    shutil.copytree(FIXTURE, root)
    return root


def test_a_missing_depth_model_is_refused_before_anything_is_written(dataset, tmp_path, capsys):
    before = tree(tmp_path)
    missing = tmp_path / "no_such_model"
    for out in (["--out", str(tmp_path / "work" / "with_depth")], []):  # into a copy, and in place
        line = refusal(capsys, [str(dataset), "--depth_model", str(missing), "--fov", "60", *out])
        assert f"no config.json in '{missing}'" in line
        assert tree(tmp_path) == before  # no copy, no .stvla-depth in the dataset, no lock file


@pytest.mark.parametrize("text, said", [("[1, 2]", "expected a JSON object of settings, got [1, 2]"),
                                        ("{model_type: x", "not a JSON file (Expecting property name")])
def test_a_depth_model_config_that_is_no_json_object_is_one_line_naming_it(dataset, tmp_path, capsys, text, said):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(text)
    before = tree(tmp_path)
    for out in (["--out", str(tmp_path / "work" / "with_depth")], []):
        line = refusal(capsys, [str(dataset), "--depth_model", str(model), "--fov", "60", *out])
        assert line.startswith(f"stvla depth: error: {model / 'config.json'}: {said}")
        assert tree(tmp_path) == before


def test_a_model_type_that_is_not_a_name_is_refused(dataset, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": ["zoedepth"]}')  # a list: no key of the estimators
    line = refusal(capsys, [str(dataset), "--depth_model", str(model), "--fov", "60"])
    assert line.startswith(f"stvla depth: error: {model / 'config.json'}: model_type ['zoedepth'] is not a depth model")


def test_out_inside_the_dataset_or_the_dataset_inside_out_is_refused(dataset, tmp_path, capsys, tiny_depth_anything):
    before = tree(tmp_path)
    model = ["--depth_model", str(tiny_depth_anything), "--fov", "60"]
    inside = dataset / "meta" / "with_depth"
    line = refusal(capsys, [str(dataset), *model, "--out", str(inside)])
    assert line == f"stvla depth: error: --out {inside} is inside the dataset {dataset}: write it elsewhere"
    holder = tmp_path / "work"
    line = refusal(capsys, [str(dataset), *model, "--out", str(holder)])
    assert line == f"stvla depth: error: the dataset {dataset} is inside --out {holder}: write it elsewhere"
    assert tree(tmp_path) == before  # the copy did not recurse into the dataset


@pytest.mark.parametrize("camera, said", [
    (["--fov", "60", "--intrinsics", "80,80,48,48"], "give the camera as --intrinsics or as --fov, not both"),
    (["--intrinsics", "80,80,nan,48"], "--intrinsics '80,80,nan,48': every value must be a finite number"),
    (["--intrinsics", "inf,80,48,48"], "--intrinsics 'inf,80,48,48': every value must be a finite number"),
    (["--fov", "nan"], "--fov nan"),
])
def test_camera_settings_are_refused_before_the_copy(dataset, tmp_path, capsys, tiny_depth_anything, camera, said):
    before = tree(tmp_path)
    out = tmp_path / "work" / "with_depth"
    line = refusal(capsys, [str(dataset), "--depth_model", str(tiny_depth_anything), *camera, "--out", str(out)])
    assert line.startswith(f"stvla depth: error: {said}")
    assert tree(tmp_path) == before  # no copy at --out, no NaN intrinsics written anywhere


def test_a_failure_after_writing_began_removes_what_the_run_made(dataset, tmp_path, capsys, tiny_depth_anything):
    """The video cut after episode 0's frames: episode 0 is estimated (the copy and the work folder exist),
    then episode 1 cannot be decoded."""
    video = dataset / VIDEO
    video.write_bytes(video.read_bytes()[:9000])
    work = tmp_path / "work"
    before = tree(work)
    out = work / "with_depth"
    line = failure(capsys, [str(dataset), "--depth_model", str(tiny_depth_anything), "--fov", "60", "--out", str(out)])
    assert line.startswith("stvla depth: error: episode 1: cannot decode video file")
    # The lock file beside --out stays, as after a run that succeeds (removing it would race a next writer).
    assert [entry for entry in tree(work) if entry[0] != ".with_depth.lock"] == before

    dataset_before = tree(dataset)
    line = failure(capsys, [str(dataset), "--depth_model", str(tiny_depth_anything), "--fov", "60"])  # in place
    assert line.startswith(f"stvla depth: error: episode 1: cannot decode video file {video}")
    assert [entry for entry in tree(dataset) if entry[0] != ".stvla.lock"] == dataset_before  # no .stvla-depth


def test_a_failed_resume_keeps_the_work_of_the_interrupted_run(dataset, tmp_path, capsys, tiny_depth_anything):
    from stvla.data.add_depth import WORK_DIRECTORY, DepthConfig, add_depth

    add_depth(DepthConfig(dataset=str(dataset), depth_model=str(tiny_depth_anything), fov=60), progress=False,
              stop_after=1)  # interrupted after episode 0
    kept = sorted(path.name for path in (dataset / WORK_DIRECTORY).rglob("episode-*.npy"))
    assert kept == ["episode-000000.npy"]
    video = dataset / VIDEO
    video.write_bytes(video.read_bytes()[:9000])
    failure(capsys, [str(dataset), "--depth_model", str(tiny_depth_anything), "--fov", "60"])
    assert sorted(path.name for path in (dataset / WORK_DIRECTORY).rglob("episode-*.npy")) == kept


def test_depth_into_a_new_copy_still_works(dataset, tmp_path, capsys, tiny_depth_anything):
    out = tmp_path / "work" / "with_depth"
    assert main(["depth", str(dataset), "--depth_model", str(tiny_depth_anything), "--fov", "60",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"depth added: {out}"
    assert sorted(path.name for path in out.iterdir()) == ["data", "meta", "videos"]  # no work folder left
    assert not list(out.parent.glob("with_depth.tmp-*"))
