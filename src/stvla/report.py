"""`stvla report DIR`: one self-contained HTML page for an evaluation, a training run or benchmark
results, to look at rather than read.

    stvla report runs/eval            # -> runs/eval/report.html
    stvla report runs/st              # a training run: curves, validation, best checkpoint, config
    stvla report benchmarks/results   # stvla bench's tables and plots (bench.json, bench_quick.json)

An evaluation's page has the per-task table with 95% intervals (and, for traced policies, what the
traces did), the success plot, every saved episode video (RGB with its traces | the depth the policy
read, LLARVA's predicted path drawn on the RGB) and the run's config. A training run's page has the
loss plot, the validation and closed-loop figures, which checkpoint is the best, and the config; an
evaluation inside it (`evals/step-*/eval`) gets its own page, linked. Links are relative, nothing
is fetched from a server, and the folder can be copied as it is. A file the page would show that is
missing is an error naming it, never a broken page.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

from stvla.data.store import write_atomically

REPORT_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.overall td { font-weight: bold; }
.videos { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; } figcaption { font-size: 0.9em; color: #555; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.success { color: #1a7f37; } .failure { color: #b42318; }
"""


def write_report(directory: str | Path) -> Path:
    """Write DIR/report.html for an evaluation or a training run in DIR; returns its path."""
    directory = Path(directory)
    if (directory / "eval_info.json").is_file():
        body = evaluation_page(directory)
    elif (directory / "train_config.json").is_file():
        body = training_page(directory)
    elif list(directory.glob("bench*.json")):
        body = bench_page(directory)
    else:
        raise ValueError(f"{directory} holds no evaluation (eval_info.json), training run (train_config.json) or "
                         f"benchmark results (bench.json)")
    out = directory / REPORT_FILE
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(str(directory))}"
            f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
    write_atomically(out, lambda temporary: temporary.write_text(page))
    return out


# --- evaluation ---------------------------------------------------------------------------------------------
TRACE_COLUMNS = [("trace_step_share", "steps with traces", "{:.0%}"),
                 ("traced_pixel_share", "pixels (or trace tokens) traced", "{:.2%}"),
                 ("trace_token_change", "tokens changed", "{:.2%}"),
                 ("trace_sensitivity", "action change without traces", "{:.4f}"),
                 ("trace_error_px", "predicted-path error (px)", "{:.1f}")]


def evaluation_page(directory: Path) -> str:
    info = _read_json(directory / "eval_info.json")
    config = info.get("config", {})
    who = config.get("server") or config.get("policy", "")
    parts = [f"<h1>Evaluation of {html.escape(str(who))}</h1>",
             f"<p>{info['overall']['episodes']} episodes, at most {config.get('max_steps', '?')} steps each, "
             f"held-out seeds.</p>", "<h2>Success by task (95% intervals)</h2>", success_table(info)]
    if (directory / "success_by_task.png").is_file():
        parts.append(_image(directory, "success_by_task.png", "success by task"))
    videos = [episode for episode in info["episodes"] if episode.get("video")]
    if videos:
        parts.append("<h2>Episodes</h2><p>Left: the camera image with the traces the policy was given (LLARVA: the "
                     "path it predicts); right: the depth it read (ST-VLA: with its traces drawn in).</p>")
        parts.append('<div class="videos">' + "".join(_video(directory, episode) for episode in videos) + "</div>")
    parts.append(_config_block(config))
    return "\n".join(parts)


def success_table(info: dict[str, Any]) -> str:
    rows = list(info["per_task"].items()) + [("overall", info["overall"])]
    extra = [c for c in TRACE_COLUMNS if any(row.get(c[0]) is not None for _, row in rows)]
    head = "".join(f"<th>{html.escape(title)}</th>" for title in
                   ["task", "episodes", "success", "95% interval", "sub-goal", "mean steps"] + [c[1] for c in extra])
    body = []
    for task, row in rows:
        low, high = row["ci95"]
        cells = [html.escape(task), str(row["episodes"]), f"{100 * row['success_rate']:.0f}%",
                 f"[{100 * low:.0f}, {100 * high:.0f}]",
                 "" if row.get("subgoal_rate") is None else f"{100 * row['subgoal_rate']:.0f}%",
                 "" if row.get("mean_steps") is None else f"{row['mean_steps']:.1f}"]
        cells += ["" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in extra]
        css = ' class="overall"' if task == "overall" else ""
        body.append(f"<tr{css}>" + "".join(f'<td class="num">{c}</td>' if i else f"<td>{c}</td>"
                                            for i, c in enumerate(cells)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _video(directory: Path, episode: dict[str, Any]) -> str:
    path = directory / "videos" / Path(episode["video"]).name
    outcome = "success" if episode["success"] else "failure"
    caption = (f"{html.escape(episode['task'])}, episode {episode['attempt']}: "
               f"<span class=\"{outcome}\">{outcome}</span> in {episode['steps']} steps")
    paths = ""
    if episode.get("paths_image"):  # LLARVA: its predicted path against the one the end effector took
        image = directory / "videos" / Path(episode["paths_image"]).name
        paths = (f'<br><img src="{_relative(directory, image)}" width="512" alt="predicted and actual paths">'
                 "<br>predicted path (cyan) and the path the end effector then took (red)")
    return (f'<figure><video controls preload="metadata" width="512" src="{_relative(directory, path)}"></video>'
            f"<figcaption>{caption}{paths}</figcaption></figure>")


# --- training ------------------------------------------------------------------------------------------------
def training_page(directory: Path) -> str:
    config = _read_json(directory / "train_config.json")
    parts = [f"<h1>Training run {html.escape(directory.name)}: {html.escape(config.get('policy', ''))}</h1>",
             f"<p>Dataset {html.escape(str(config.get('dataset', '')))}, {config.get('steps')} steps of "
             f"{config.get('batch_size')}.</p>"]
    if (directory / "loss.png").is_file():
        parts.append("<h2>Curves</h2>" + _image(directory, "loss.png", "training and validation loss"))
    run = _read_json(directory / "run.json") if (directory / "run.json").is_file() else {}
    best = run.get("best")
    parts.append("<h2>Checkpoints</h2><ul>"
                 + ("<li><code>policy/</code>: the last step's weights</li>" if (directory / "policy").is_dir() else "")
                 + (f"<li><code>best/</code>: step {best['step']}, {html.escape(best['metric'])} "
                    f"{best['value']:.4g}</li>" if best else "<li>no best checkpoint (nothing held out)</li>")
                 + "</ul>")
    if run.get("validation_episodes"):
        parts.append(f"<p>Held out for validation: episodes {run['validation_episodes']}.</p>")
    evals = sorted(directory.glob("evals/step-*/eval/eval_info.json"))
    if evals:
        rows = []
        for path in evals:
            info = _read_json(path)
            page = write_report(path.parent)
            low, high = info["overall"]["ci95"]
            rows.append(f"<tr><td><a href=\"{_relative(directory, page)}\">{html.escape(path.parent.parent.name)}</a>"
                        f"</td><td class=\"num\">{100 * info['overall']['success_rate']:.0f}% [{100 * low:.0f}, "
                        f"{100 * high:.0f}]</td></tr>")
        parts.append("<h2>Closed-loop evaluations during training</h2><table><thead><tr><th>checkpoint</th>"
                     f"<th>success (95% interval)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    parts.append(_config_block(config))
    return "\n".join(parts)


# --- benchmark ---------------------------------------------------------------------------------------------------
def bench_page(directory: Path) -> str:
    """Every `stvla bench` result in DIR (the full protocol, --quick): its tables and plots, as recorded."""
    parts = ["<h1>Benchmark results</h1>"]
    for path in sorted(directory.glob("bench*.json")):
        result = _read_json(path)
        if "markdown" not in result:
            continue
        parts.append(f"<h2>{html.escape(path.stem)}: <code>{html.escape(result.get('command', ''))}</code></h2>"
                     f"<p>{html.escape(result.get('date', ''))}, {html.escape(result.get('machine', ''))}</p>")
        parts.append(markdown_html(result["markdown"], directory))
    return "\n".join(parts)


def markdown_html(lines: list[str], directory: Path) -> str:
    """The recorder's markdown (paragraphs, bold, code, pipe tables, images) as HTML; images are looked up
    by file name in `directory`."""
    out, table = [], []

    def flush_table() -> None:
        if table:
            head, *rows = [row for row in table if not set(row.replace("|", "").strip()) <= {"-", " "}]
            cells = [[_inline(c.strip()) for c in row.strip().strip("|").split("|")] for row in [head, *rows]]
            out.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
                       + "</tbody></table>")
            table.clear()

    for line in (part for entry in lines for part in entry.splitlines()):
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line.strip())
        if image:
            out.append(_image(directory, Path(image.group(2)).name, image.group(1)))
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush_table()
    return "\n".join(out)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


# --- pieces ----------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"report: {path} is missing") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"report: {path} is not valid JSON ({error})") from None


def _relative(directory: Path, path: Path) -> str:
    """`path` as a link from the page in `directory`; a file the page would show must exist."""
    if not path.is_file():
        raise FileNotFoundError(f"report: {path} is missing (the page would show it)")
    return html.escape(Path(os.path.relpath(path, directory)).as_posix(), quote=True)


def _image(directory: Path, name: str, alt: str) -> str:
    return f'<img src="{_relative(directory, directory / name)}" alt="{html.escape(alt)}" style="max-width:100%">'


def _config_block(config: dict[str, Any]) -> str:
    return f"<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre>"
