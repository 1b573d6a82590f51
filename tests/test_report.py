"""`stvla report`: one page per evaluation or training run, checked in a real headless browser (Debian's
Chromium: .ci/run installs it and sets STVLA_BROWSER_TESTS=required, so CI never skips these)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from stvla.cli import main
from stvla.evaluate import EvalConfig, evaluate
from stvla.report import write_report
from stvla.train import train
from test_train import tiny_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("STVLA_BROWSER_TESTS") != "required",
    reason="no Chromium here (apt-get install chromium); CI installs it")


@pytest.fixture(scope="module")
def run_with_eval(small_dataset, tmp_path_factory):
    """A tiny training run and an evaluation of its policy with one saved video."""
    root, _ = small_dataset
    out = tmp_path_factory.mktemp("report")
    policy = train(tiny_config(root, out / "run", steps=10), progress=False)
    evaluate(EvalConfig(policy=str(policy), tasks="reach-v3", episodes=2, max_steps=20, videos=1,
                        out=str(out / "eval")), progress=False)
    return out / "run", out / "eval"


def browser(*args: str, profile) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def test_an_evaluation_page_has_the_table_the_plot_the_videos_and_the_config(run_with_eval, capsys):
    _, eval_dir = run_with_eval
    assert main(["report", str(eval_dir)]) == 0
    page = (eval_dir / "report.html").read_text()
    assert "<table>" in page and "reach-v3" in page and "95% interval" in page
    assert page.count("<video") == 1 and 'src="videos/' in page, "relative links: the folder can be copied"
    assert 'src="success_by_task.png"' in page and "&quot;max_steps&quot;: 20" in page


def test_a_missing_file_is_an_error_not_a_broken_page(run_with_eval, tmp_path, capsys):
    _, eval_dir = run_with_eval
    copy = shutil.copytree(eval_dir, tmp_path / "eval")
    video = next((copy / "videos").glob("*.mp4"))
    video.unlink()
    with pytest.raises(FileNotFoundError, match=video.name):
        write_report(copy)
    assert main(["report", str(copy)]) == 2 and video.name in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2  # neither an evaluation nor a training run


def test_a_training_page_has_the_curves_and_the_checkpoints(run_with_eval):
    run_dir, _ = run_with_eval
    page = write_report(run_dir).read_text()
    assert 'src="loss.png"' in page and "<code>policy/</code>" in page and "spatialvla" in page


@needs_browser
def test_the_page_renders_in_chromium_and_its_video_plays(run_with_eval, tmp_path):
    _, eval_dir = run_with_eval
    page = write_report(eval_dir)
    shot = tmp_path / "shot.png"
    done = browser("--window-size=1100,1400", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "p1")
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, "the screenshot shows a page, not a blank"
    dom = browser("--virtual-time-budget=5000", "--dump-dom", page.as_uri(), profile=tmp_path / "p2").stdout
    assert "<table>" in dom and "<video" in dom and "overall" in dom
    # The saved video decodes in the browser (a probe page beside the report, with the same relative link).
    video = next((eval_dir / "videos").glob("*.mp4")).name
    probe = eval_dir / "probe.html"
    probe.write_text(f'<!doctype html><title>waiting</title><video id="v" preload="auto" src="videos/{video}">'
                     "</video><script>const v = document.getElementById('v');"
                     "v.addEventListener('loadeddata', () => { document.title = 'loaded ' + v.videoWidth; });"
                     "v.addEventListener('error', () => { document.title = 'error'; });</script>")
    dom = browser("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), profile=tmp_path / "p3").stdout
    probe.unlink()
    assert "<title>loaded " in dom and "<title>loaded 0" not in dom, dom[:300]


def test_saved_videos_are_what_browsers_show_in_the_right_colours(run_with_eval):
    """Browsers read a lossless rgb24 h264 stream's planes as YUV (wrong colours): eval videos are yuv420p."""
    import av

    _, eval_dir = run_with_eval
    with av.open(str(next((eval_dir / "videos").glob("*.mp4")))) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"


def test_benchmark_results_page_renders_the_recorded_tables_and_plots(tmp_path):
    import json


    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    results = tmp_path / "benchmarks" / "results"
    Image.new("RGB", (40, 30), "white").save(results / "bench.png")
    markdown = ["**Main table**: success % [95% CI].\n\n| row | reach-v3 |\n| --- | --- |\n| base | 16% [8, 29] |",
                "![per-task success](benchmarks/results/bench.png)"]
    (results / "bench.json").write_text(json.dumps({"command": "stvla bench", "date": "today", "machine": "here",
                                                    "markdown": markdown}))
    page = write_report(results).read_text()
    assert "<b>Main table</b>" in page and "<td>16% [8, 29]</td>" in page and 'src="bench.png"' in page
    (results / "bench.png").unlink()
    with pytest.raises(FileNotFoundError, match="bench.png"):
        write_report(results)


def test_llarva_episodes_show_the_predicted_path_against_the_actual_one(small_dataset, tmp_path):
    from stvla.train import TrainConfig

    from test_llarva import TINY

    root, _ = small_dataset
    policy = train(TrainConfig(policy="llarva", dataset=str(root), out=str(tmp_path / "llarva"), model=TINY, steps=4,
                               batch_size=8, trace_points=8, save_every=1000), progress=False)
    info = evaluate(EvalConfig(policy=str(policy), tasks="reach-v3", episodes=1, max_steps=12, videos=1,
                               out=str(tmp_path / "eval")), progress=False)
    paths = tmp_path / "eval" / "videos" / os.path.basename(info["episodes"][0]["paths_image"])
    image = np.asarray(Image.open(paths))
    assert image.shape[0] == 256 and image.shape[1] == 3 * 256, "three steps side by side"
    page = write_report(tmp_path / "eval").read_text()
    assert f'src="videos/{paths.name}"' in page and "predicted path (cyan)" in page
