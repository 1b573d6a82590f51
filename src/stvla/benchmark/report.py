"""The benchmark's tables, claims and plot, from the cells' results.

Success is pooled over a row's seeds (successes / episodes), with a Wilson 95% interval; the mean
column pools every target task. A claim compares two rows by the difference of their pooled success
rates with a 95% (Newcombe) interval, and reads "supported" only when that interval lies above zero,
"contradicted" when it lies below, and "inside the noise" otherwise. A task where every row sits
below 10% or above 90% is marked as a floor or a ceiling rather than ranked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stvla.benchmark.record import RESULTS_SUBDIR, record
from stvla.evaluate.rollout import has_subgoal_record
from stvla.evaluate.stats import wilson_interval

# The papers' own figures for the direction of each claim (SimplerEnv WidowX, as the papers report them), shown
# beside ours.
CLAIMS = (
    # (claim, better row, worse row, the papers' figure)
    ("ST-VLA > SpatialVLA-style base (both fine-tuned)", "st-C-b30", "base-finetuned",
     "ST-VLA paper: +4 points over SpatialVLA"),
    ("ST-VLA > TraceVLA-style", "st-C-b30", "tracevla", "ST-VLA paper: +19 points over TraceVLA"),
    ("variant C > variant A", "st-C-b30", "st-A-b30", "ST-VLA paper, put spoon: 36.4% (C) vs 9.1% (A)"),
    ("b = 30 > b = 15", "st-C-b30", "st-C-b15", "ST-VLA paper: b = 30 the most stable of 7 / 15 / 30"),
    ("b = 30 > b = 7", "st-C-b30", "st-C-b7", "ST-VLA paper: b = 30 the most stable of 7 / 15 / 30"),
    ("zero-shot traces >= fine-tuned without traces", "zero-shot-traces", "base-finetuned",
     "ST-VLA paper: zero-shot traces match or beat fine-tuning without traces"),
    ("LLARVA: predicting traces helps", "llarva", "llarva-no-traces",
     "LLARVA paper (RLBench, theirs): about +15 points with traces"),
    ("LLARVA: instruction pre-training helps", "llarva", "llarva-no-pretrain",
     "LLARVA paper (RLBench, theirs): about +17.5 points with pre-training"),
    ("ST-VLA reads its traces (as trained > traces removed at test time)", "st-C-b30", "st-C-b30-traces-removed",
     "not measured by the papers"),
    ("no state: ST-VLA > SpatialVLA-style base", "st-C-b30-no-state", "base-finetuned-no-state",
     "the papers' inputs: ST-VLA paper +4 points"),
    ("no state: ST-VLA > TraceVLA-style", "st-C-b30-no-state", "tracevla-no-state",
     "the papers' inputs: ST-VLA paper +19 points"),
    # Our policies read the proprio state, the papers' do not: does dropping it cost the base anything?
    ("the base without state >= with state (both fine-tuned)", "base-finetuned-no-state", "base-finetuned",
     "not measured by the papers"),
)
MAIN_ROWS = ("base-zero-shot", "base-finetuned", "tracevla", "st-C-b30", "zero-shot-traces", "st-C-b30-traces-removed")
NO_STATE_ROWS = ("base-finetuned-no-state", "tracevla-no-state", "st-C-b30-no-state")
VARIANT_ROWS = ("st-A-b30", "st-B-b30", "st-C-b30")
BUFFER_ROWS = ("st-C-b7", "st-C-b15", "st-C-b30")
LLARVA_ROWS = ("llarva", "llarva-no-traces", "llarva-no-pretrain")


def pooled(results: list[dict[str, Any]], task: str | None = None, metric: str = "success") -> tuple[int, int]:
    """(successes, episodes) over several cells' episodes, for one task or all (the sub-goal: over the
    tasks that define one)."""
    episodes = [e for r in results for e in r["episodes"] if task is None or e["task"] == task]
    if metric == "subgoal":
        episodes = [e for e in episodes if has_subgoal_record(e)]
    return sum(bool(e[metric]) for e in episodes), len(episodes)


def rate_text(successes: int, n: int) -> str:
    if n == 0:
        return "n/a"
    low, high = wilson_interval(successes, n)
    return f"{100 * successes / n:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def difference(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float, float]:
    """Rate a minus rate b, with Newcombe's 95% interval for a difference of two proportions.

    Built from each rate's Wilson interval, so it stays honest at 0% and 100% where the Wald
    interval collapses to a point."""
    (sa, na), (sb, nb) = a, b
    pa, pb = sa / na, sb / nb
    (la, ua), (lb, ub) = wilson_interval(sa, na), wilson_interval(sb, nb)
    diff = pa - pb
    return diff, diff - math.hypot(pa - la, ub - pb), diff + math.hypot(ua - pa, pb - lb)


def points_text(diff: float, low: float, high: float, decimals: int = 0) -> str:
    """A difference of rates and its interval in signed percentage points, e.g. `+7 [-5, +19]`.

    A figure that rounds to zero but is not zero gets more decimals (up to two): `[-0.3, +24]` says on
    which side of zero the interval ends, where `[-0, +24]` reads as a typo."""
    def signed(value: float) -> str:
        for places in range(decimals, decimals + 3):
            text = f"{100 * value:+.{places}f}"
            if value == 0 or float(text) != 0:
                break
        return text
    return f"{signed(diff)} [{signed(low)}, {signed(high)}]"


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "supported"
    if high < 0:
        return "contradicted"
    return "inside the noise"


def _row_cells(results: dict[str, Any], key: str, first_seed_only: bool = False) -> list[dict[str, Any]]:
    by_seed = results["cells"].get(key, {})
    seeds = sorted(by_seed, key=int)
    return [by_seed[s] for s in (seeds[:1] if first_seed_only else seeds)]


def success_table(results: dict[str, Any], keys: tuple[str, ...], labels: dict[str, str], first_seed_only: bool,
                  metric: str = "success") -> list[str]:
    """A markdown table: one line per row key present, a column per target task and the mean."""
    targets = results["targets"]
    lines = ["| row | seeds | " + " | ".join(targets) + " | mean |", "| --- | --- |" + " --- |" * (len(targets) + 1)]
    for key in keys:
        cells = _row_cells(results, key, first_seed_only)
        if not cells:
            continue
        seeds = len(cells)
        values = [rate_text(*pooled(cells, task, metric)) for task in targets] + [rate_text(*pooled(cells, None, metric))]
        lines.append(f"| {labels[key]} | {seeds} | " + " | ".join(values) + " |")
    return lines


def trace_error_text(cells: list[dict[str, Any]]) -> str:
    errors = [e["trace_error_px"] for r in cells for e in r["episodes"] if e.get("trace_error_px") is not None]
    return f"{sum(errors) / len(errors):.1f}" if errors else "-"


def trace_use_table(results: dict[str, Any], keys: tuple[str, ...], labels: dict[str, str]) -> list[str]:
    """Per traced row, what its traces did in the evaluation (stvla eval's diagnostics, over every episode of
    its cells that measured them): steps with traces, pixels changed, and the action change without them."""
    lines = ["| row | episodes | steps with traces | input pixels changed | image tokens changed (relative L2) "
             "| action change without traces (mean L2) | actions (mean L2) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key in keys:
        episodes = [e for cell in _row_cells(results, key) for e in cell["episodes"]
                    if e.get("trace_step_share") is not None]
        if not episodes:
            continue

        def mean(name: str) -> float | None:
            values = [e[name] for e in episodes if e.get(name) is not None]
            return sum(values) / len(values) if values else None

        moved, scale, tokens = mean("trace_sensitivity"), mean("action_norm"), mean("trace_token_change")
        lines.append(f"| {labels[key]} | {len(episodes)} | {100 * mean('trace_step_share'):.0f}% | "
                     f"{100 * (mean('traced_pixel_share') or 0):.2f}% | "
                     f"{'-' if tokens is None else f'{100 * tokens:.2f}%'} | "
                     f"{'-' if moved is None else f'{moved:.4f}'} | {'-' if scale is None else f'{scale:.3f}'} |")
    return lines


def stage1_minutes_text(results: dict[str, Any], protocol: dict[str, Any]) -> str:
    if results.get("stage1_minutes") is not None:
        return f"{results['stage1_minutes']:.1f}"
    if results.get("stage1_kept_from"):
        return f"not timed by the bench: the kept base was made by {results['stage1_kept_from']}"
    return "given (--base)" if protocol.get("base") else "not recorded"


def recorded_minutes_text(results: dict[str, Any]) -> str:
    """The summed wall time the cells recorded, and how many recorded one (older cells did not)."""
    cells = [cell for by_seed in results["cells"].values() for cell in by_seed.values()]
    cells += [results["selection"]] if results.get("selection") else []
    minutes = [cell["minutes"] for cell in cells if cell.get("minutes") is not None]
    return f"{sum(minutes):.1f} ({len(minutes)} of {len(cells)} cells recorded a time)"


def floor_ceiling_notes(results: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    notes = []
    for task in results["targets"]:
        rates = [s / n for s, n in (pooled(_row_cells(results, k), task) for k in keys if _row_cells(results, k)) if n]
        if rates and max(rates) < 0.10:
            notes.append(f"- {task}: every row below 10% (floor): no ranking is read into this task.")
        elif rates and min(rates) > 0.90:
            notes.append(f"- {task}: every row above 90% (ceiling): no ranking is read into this task.")
    return notes


def claims_table(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["| claim | the papers (SimplerEnv) | training seeds compared | ours: difference [95% CI], points | verdict |",
             "| --- | --- | --- | --- | --- |"]
    verdicts = []
    trained = {row["key"]: row["finetuned"] for row in results["rows"]}  # a zero-shot row has no training seed
    for claim, better, worse, theirs in CLAIMS:
        a_cells, b_cells = results["cells"].get(better, {}), results["cells"].get(worse, {})
        a_seeds, b_seeds = sorted(a_cells, key=int), sorted(b_cells, key=int)
        if trained.get(better, True) and trained.get(worse, True):
            # Two fine-tuned rows meet on the training seeds both have (an ablation row has the first only),
            # so a row whose later seeds are still running is not weighed against one that has them.
            a_seeds = b_seeds = [s for s in a_seeds if s in b_cells]
        if not a_seeds or not b_seeds:
            continue
        a, b = [a_cells[s] for s in a_seeds], [b_cells[s] for s in b_seeds]
        diff, low, high = difference(pooled(a), pooled(b))
        outcome = verdict(low, high)
        seeds = f"{','.join(map(str, a_seeds))} / {','.join(map(str, b_seeds))}"
        verdicts.append({"claim": claim, "difference": diff, "ci95": [low, high], "verdict": outcome, "seeds": seeds})
        lines.append(f"| {claim} | {theirs} | {seeds} | {points_text(diff, low, high, 1)} "
                     f"| {outcome} |")
    return lines, verdicts


def plot_main_rows(results: dict[str, Any], labels: dict[str, str], path: Path) -> Path:
    """Grouped bars: per target task (and the mean), one bar per main-table row, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = results["targets"] + ["mean"]
    keys = [k for k in MAIN_ROWS if _row_cells(results, k)]
    fig, ax = plt.subplots(figsize=(1.9 * len(groups) + 2, 3.6))
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        cells = _row_cells(results, key)
        counts = [pooled(cells, None if g == "mean" else g) for g in groups]
        rates = [s / n if n else 0.0 for s, n in counts]
        intervals = [wilson_interval(s, n) for s, n in counts]
        errors = [[r - lo for r, (lo, _) in zip(rates, intervals)], [hi - r for r, (_, hi) in zip(rates, intervals)]]
        xs = [g + (i - (len(keys) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [100 * r for r in rates], width, yerr=[[100 * e for e in side] for side in errors],
               capsize=2, label=labels[key])
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("success %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], config) -> Path:
    """benchmarks/results/<name>.json (every cell's figures) and its BENCHMARKS.md section, plus the plot."""
    labels = {row["key"]: row["label"] for row in results["rows"]}
    c = results["config"]
    repo = Path(config.repo)
    markdown = []
    if results.get("selection"):
        per_task = results["selection"]["per_task"]
        how = ("the base fine-tuned without traces on each candidate's own demonstrations (tasks outside the "
               "pre-training set), then its success there" if results["selection"].get("method") == "finetuned"
               else "the base's success without traces")
        markdown += [f"Target selection: {how}, {c['selection_episodes']} episodes per task; the {c['num_targets']} "
                     f"tasks closest to 50% are the targets.", "",
                     "| task | base success [95% CI] | target |", "| --- | --- | --- |"]
        markdown += [f"| {task} | {rate_text(row['successes'], row['episodes'])} | "
                     f"{'yes' if task in results['targets'] else ''} |" for task, row in per_task.items()]
        markdown += [f"| {task} | not finished yet | |" for task in results["selection"].get("pending", [])]
    if not results["targets"]:  # the selection is still running: nothing else to show yet
        finished, pending = len(results["selection"]["per_task"]), len(results["selection"]["pending"])
        rows = [("target tasks", f"not chosen yet: {finished} of {finished + pending} candidates finished"),
                ("work recorded by the selection cells: minutes", f"{results['selection']['minutes']:.1f}")]
        figures = {"targets": [], "selection": results["selection"], "protocol": c}
        return record(config.name, figures, rows, report_title(config), root=repo, markdown=["\n".join(markdown)])
    plot = plot_main_rows(results, labels, repo / RESULTS_SUBDIR / f"{config.name}.png")
    markdown += ["", "**Main table**: success rate % [95% CI], pooled over the training seeds.", ""]
    markdown += success_table(results, MAIN_ROWS, labels, first_seed_only=False)
    markdown += floor_ceiling_notes(results, MAIN_ROWS)
    markdown += ["", "**Sub-goal rate** (near the object or grasped at some step), same rows.", ""]
    markdown += success_table(results, MAIN_ROWS, labels, first_seed_only=False, metric="subgoal")
    table = success_table(results, NO_STATE_ROWS, labels, first_seed_only=False)
    if len(table) > 2:  # a table only once one of its rows has finished
        made = (f"the base with its state token dropped, every weight trained {c['stage1_no_state_steps']} steps more "
                "on the last pre-training set" if c.get("stage1_no_state_steps") else
                "a base pre-trained alike without the state token")
        markdown += ["", f"**Without state** (the papers' inputs: image, depth and instruction; {made}), pooled over "
                     "the training seeds.", ""] + table
    for title, keys in (("Trace variants", VARIANT_ROWS), ("Trace buffers", BUFFER_ROWS)):
        table = success_table(results, keys, labels, first_seed_only=True)
        if len(table) > 2:
            markdown += ["", f"**{title}** (first seed of each row).", ""] + table
    table = trace_use_table(results, tuple(dict.fromkeys(MAIN_ROWS + NO_STATE_ROWS + VARIANT_ROWS + BUFFER_ROWS)), labels)
    if len(table) > 2:  # only once an evaluation measured its traces
        markdown += ["", "**Trace use** (stvla eval's diagnostics: does the policy read its traces?).", ""] + table
    llarva_keys = tuple(k for k in LLARVA_ROWS if _row_cells(results, k))
    if llarva_keys:
        markdown += ["", "**LLARVA** (first seed; predicted-trace error: mean pixel distance to the path the end "
                     "effector then took, closed loop). The pre-trained rows tune LoRA adapters of the trunk on the "
                     "fine-tuning set; the row without instruction pre-training trains every weight there, from "
                     "scratch, for the same steps.", ""]
        table = success_table(results, llarva_keys, labels, first_seed_only=True)
        table[0] += " trace error px |"
        table[1] += " --- |"
        table[2:] = [line + f" {trace_error_text(_row_cells(results, k, True))} |" for line, k in zip(table[2:], llarva_keys)]
        markdown += table
    claims, verdicts = claims_table(results)
    markdown += ["", "**The papers' claims on our benchmark.** Their figures are theirs (SimplerEnv, 4B models); "
                 "ours compare pooled success with a 95% interval of the difference.", ""] + claims
    markdown += ["", f"![per-task success of the main rows]({plot.relative_to(repo).as_posix()})"]
    seeds = [s for s in str(c["seeds"]).split(",") if s.strip()]
    expected_cells = sum(len(seeds) if row["main"] and row["finetuned"] else 1 for row in results["rows"])
    finished_cells = sum(len(by_seed) for by_seed in results["cells"].values())
    rows = [
        ("pre-training set", f"{c['pretrain_tasks']}, {c['pretrain_episodes']} expert episodes per task"),
        ("stage 1 / stage 2 steps (batch 32)", f"{c['stage1_steps']} / {c['stage2_steps']}"),
        ("stage-1 pre-training of the base: minutes", stage1_minutes_text(results, c)),
        *([("the base without state (the rows with the papers' inputs): minutes",
            "not made yet" if results.get("no_state_base_minutes") is None else f"{results['no_state_base_minutes']:.1f}")]
          if any(not row.get("use_state", True) for row in results["rows"]) else []),
        ("target tasks", ", ".join(results["targets"])),
        ("fine-tuning set", f"{c['finetune_episodes']} episodes per target task"),
        ("LLARVA instruction pre-training", f"{c['llarva_pretrain_tasks']} tasks, {c['llarva_pretrain_episodes']} "
                                            f"episodes each, {c['llarva_pretrain_steps']} steps"),
        ("evaluation", f"{c['eval_episodes']} episodes per task, row and seed; at most {c['max_steps']} steps"),
        ("training seeds (main rows)", c["seeds"]),
        ("evaluation cells finished (a row and a training seed each)", f"{finished_cells} of {expected_cells}"),
        ("wall time of this call (cached cells not re-run): minutes",
         "- (written by --report_only, or by a --share process from every process's cells)" if c.get("report_only") else f"{results['minutes_this_call']:.1f}"),
        ("work recorded by the evaluation cells (selection included; the training a cell ran, then its evaluation): "
         "minutes", recorded_minutes_text(results)),
    ]
    # Per-task figures of every cell; the episodes themselves stay in the cells' own files (results/<name>/).
    cells = {key: {seed: {"per_task": cell["per_task"], "overall": cell["overall"]} for seed, cell in by_seed.items()}
             for key, by_seed in results["cells"].items()}
    figures = {"targets": results["targets"], "claims": verdicts, "cells": cells,
               "selection": results.get("selection"), "protocol": c}
    return record(config.name, figures, rows, report_title(config), root=repo, markdown=["\n".join(markdown)])


def report_title(config) -> str:
    title = "Paper-reproduction benchmark"
    title += ", targets outside the pre-training set" if config.target_selection == "finetuned" else ""
    return title + (", reduced (`--quick`)" if config.quick else "")
