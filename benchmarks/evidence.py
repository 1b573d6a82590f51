"""The answers to "does the policy read its traces, and do traces help where history matters?" (issues 18
and 42), in one section of BENCHMARKS.md, composed from the results the other benchmarks wrote. It runs
nothing.

    python benchmarks/evidence.py

Sources (each row names its own): `bench_trace_use.py` (the main job's policy with and without its
traces), `stvla bench` (the benchmark's claims, with and without the proprio state), `bench_variants.py`
(the scripted expert with and without history), `bench_scaling.py` (the no-history learner against the
number of demonstrations), and every `bench_history.py` setting (benchmarks/results/history*.json). Each comparison is a difference of pooled success with Newcombe's
95% interval, over the training seeds both rows have; its verdict is "supported" or "contradicted"
when the interval excludes zero, else "inside the noise". What has not been measured yet is said so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record, run  # noqa: E402

from stvla.benchmark.report import CLAIMS, difference, points_text, rate_text, verdict  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# History rows compared with stacking the previous frames: the traced ways of giving history.
TRACED_ROWS = ("tracevla", "st", "st-adaptive", "st-thick6", "tokens3d", "tokens2d")
STACK_ROWS = ("stack2", "stack4")  # the previous frames stacked: 2 or 4
GOAL_POINTS = 10  # issue 42's goal: a traced row this many points above no history and the best stacking row
# The benchmark's claims this section repeats (stvla.benchmark.report.CLAIMS), found by the rows they compare
# (better, worse) so that their wording lives in one place.
CLAIM_OF = {(better, worse): claim for claim, better, worse, _ in CLAIMS}
READS_TRACES = CLAIM_OF["st-C-b30", "st-C-b30-traces-removed"]
STATE_PAIRS = ((CLAIM_OF["st-C-b30", "base-finetuned"], CLAIM_OF["st-C-b30-no-state", "base-finetuned-no-state"]),
               (CLAIM_OF["st-C-b30", "tracevla"], CLAIM_OF["st-C-b30-no-state", "tracevla-no-state"]))
STATE_COST = CLAIM_OF["base-finetuned-no-state", "base-finetuned"]


# The benchmark tables: the current one, then the archived ones whose claims still inform (results name, label).
BENCH_TABLES = (("bench", "the benchmark's targets"),
                ("archive_bench_base20k", "the 20,000-step base's benchmark (archived; other targets)"))


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def compared(a: tuple[int, int], b: tuple[int, int]) -> str:
    """`a - b` in points with its interval and verdict."""
    diff, low, high = difference(a, b)
    return f"{points_text(diff, low, high)} points: {verdict(low, high)}"


def counts(overall: dict) -> tuple[int, int]:
    return overall["successes"], overall["episodes"]


def claim_text(claim: dict) -> str:
    low, high = claim["ci95"]
    return (f"{points_text(claim['difference'], low, high, 1)} points: {claim['verdict']} "
            f"(training seeds {claim['seeds']})")


def reads_traces_rows() -> list[tuple[str, str]]:
    rows = []
    use = load("trace_use")
    if use:
        on, off = use["with traces"]["overall"], use["traces removed at test time"]["overall"]
        rows.append((f"Does the policy read its traces? The main job's ST-VLA ({use['tasks']}): success with its "
                     "traces / with them removed at test time; difference",
                     f"{rate_text(*counts(on))} / {rate_text(*counts(off))}; {compared(counts(on), counts(off))} "
                     f"(`bench_trace_use.py`)"))
        tokens = on.get("trace_token_change")
        rows.append(("... the same policy: traces on the steps / depth pixels / image tokens (relative L2); how far "
                     "its decoded actions move without them, relative to their size",
                     f"{100 * on['trace_step_share']:.0f}% / {100 * on['traced_pixel_share']:.2f}% / "
                     + (f"{100 * tokens:.2f}%" if tokens is not None else "not measured")
                     + f"; {100 * on['trace_sensitivity'] / on['action_norm']:.1f}%"))
    for name, label in BENCH_TABLES:
        claims = bench_claims(name)
        rows.append((f"... on {label} (`stvla bench`): ST-VLA as trained minus the same checkpoints with "
                     "traces removed at test time",
                     claim_text(claims[READS_TRACES]) if READS_TRACES in claims else "not measured yet"))
    for name, result in history_settings():
        sensitivities, on_target = [], []
        for row in TRACED_ROWS:
            cells = [c["overall"] for c in result.get(row, {}).values() if c["overall"].get("trace_sensitivity") is not None]
            if cells:
                relative = sum(c["trace_sensitivity"] / c["action_norm"] for c in cells) / len(cells)
                sensitivities.append(f"{row} {100 * relative:.1f}%")
            shares = [(c["target_trace_share"], c.get("hidden_target_trace_share")) for c in cells
                      if c.get("target_trace_share") is not None]
            if shares:
                hidden = [h for _, h in shares if h is not None]
                on_target.append(f"{row} {100 * sum(v for v, _ in shares) / len(shares):.0f}%"
                                 + (f" / {100 * sum(hidden) / len(hidden):.0f}%" if hidden else ""))
        if sensitivities:
            rows.append((f"... {setting_label(result)}: how far the decoded actions move without the traces, "
                         "relative to their size", "; ".join(sensitivities) + f" (`{name}`)"))
        if on_target:
            rows.append((f"... {setting_label(result)}: steps on which a trace follows the moving goal or object, "
                         "while it is shown (/ while it is hidden)", "; ".join(on_target) + f" (`{name}`)"))
    return rows


def history_settings() -> list[tuple[str, dict]]:
    """Every bench_history.py setting's results, by name."""
    return [(path.stem, json.loads(path.read_text())) for path in sorted(RESULTS.glob("history*.json"))]


def setting_label(result: dict) -> str:
    """The setting in a few words: `reach-moving-v3, from scratch, 1000 steps`."""
    setting = result.get("setting")
    if not setting:  # recorded before settings were: the section's title says it
        title = result["report"]["title"]
        return title[title.find("(") + 1:title.rfind(")")]
    how = f"LoRA fine-tuned from {Path(setting['init']).name}" if setting["init"] else "from scratch"
    inputs = "" if setting.get("use_state", True) else ", no proprio state"
    demos = f", {setting['demos']} demonstrations" if setting.get("demos", 50) != 50 else ""
    return f"{setting['task']}{demos}, {how}, {setting['steps']} steps{inputs}"


def pooled_over(result: dict, row: str, seeds: list[str]) -> tuple[int, int]:
    cells = [result[row][s]["overall"] for s in seeds]
    return sum(c["successes"] for c in cells), sum(c["episodes"] for c in cells)


def common_seeds(result: dict, a: str, b: str) -> list[str]:
    return sorted(set(result.get(a, {})) & set(result.get(b, {})), key=int)


def history_rows() -> list[tuple[str, str]]:
    rows = []
    variants = load("variants")
    for task, expert in (variants or {}).items():
        if isinstance(expert, dict) and "leading" in expert:
            rows.append((f"Is history needed on {task}? The scripted expert with history / given the current frame "
                         "only; difference",
                         f"{rate_text(*counts(expert['leading']))} / {rate_text(*counts(expert['current_state_only']))}; "
                         f"{compared(counts(expert['leading']), counts(expert['current_state_only']))} "
                         "(`bench_variants.py`)"))
    for name, result in history_settings():
        label = setting_label(result)
        if "base" in result:
            seeds = sorted(result["base"], key=int)
            rows.append((f"{label}: no history (the learner's level)",
                         f"{rate_text(*pooled_over(result, 'base', seeds))} (seeds {','.join(seeds)}; `{name}`)"))
        for row in STACK_ROWS + TRACED_ROWS:
            seeds = common_seeds(result, row, "base")
            if seeds:
                rows.append((f"Do they help when history is needed? {label}: {row} minus no history",
                             f"{compared(pooled_over(result, row, seeds), pooled_over(result, 'base', seeds))} "
                             f"(seeds {','.join(seeds)})"))
        for row in TRACED_ROWS:
            for stack in STACK_ROWS:
                seeds = common_seeds(result, row, stack)
                if seeds:
                    rows.append((f"Do traces beat stacking frames? {label}: {row} minus {stack[-1]} frames stacked",
                                 f"{compared(pooled_over(result, row, seeds), pooled_over(result, stack, seeds))} "
                                 f"(seeds {','.join(seeds)})"))
        goal = goal_row(result)
        if goal:
            rows.append((f"Issue 42's goal, {label}: a traced row {GOAL_POINTS} or more points above both no history "
                         f"and the best stacking row, both 95% intervals above 0", goal))
    return rows


def goal_row(result: dict) -> str | None:
    """Whether a traced row of a setting meets issue 42's goal, and the best traced row's two differences;
    None where the setting lacks no history, stacking or traces."""
    stacks = [row for row in STACK_ROWS if common_seeds(result, row, "base")]
    traced = [row for row in TRACED_ROWS if common_seeds(result, row, "base")]
    if not stacks or not traced:
        return None
    def rate(row: str) -> float:
        successes, episodes = pooled_over(result, row, sorted(result[row], key=int))
        return successes / episodes

    best_stack = max(stacks, key=rate)
    outcomes = []
    for row in traced:
        differences = [difference(pooled_over(result, row, seeds), pooled_over(result, other, seeds))
                       for other in ("base", best_stack) for seeds in [common_seeds(result, row, other)] if seeds]
        if len(differences) == 2:
            met = all(diff >= GOAL_POINTS / 100 and low > 0 for diff, low, _ in differences)
            outcomes.append((met, min(diff for diff, _, _ in differences), row, differences))
    if not outcomes:
        return None
    met, _, row, ((a, a_low, a_high), (b, b_low, b_high)) = max(outcomes)
    return (f"{'met' if met else 'not met'}: the best traced row, {row}, minus no history "
            f"{points_text(a, a_low, a_high)}, minus {best_stack} {points_text(b, b_low, b_high)} points")


def scaling_rows() -> list[tuple[str, str]]:
    """The no-history learner against the number of demonstrations (`bench_scaling.py`), per way of
    fine-tuning (benchmarks/results/scaling*.json) and task."""
    rows = []
    for path in sorted(RESULTS.glob("scaling*.json")):
        scaling = json.loads(path.read_text())
        within = round(100 * scaling["setting"]["within"])
        how = {0: "every weight fine-tuned"}.get(scaling["setting"].get("lora_rank", 32),
                                                 f"LoRA rank {scaling['setting'].get('lora_rank', 32)}")
        for task, curve in scaling["tasks"].items():
            points = "; ".join(f"N = {p['demos']}: {rate_text(*counts(p['overall']))}"
                               + (f" (training starts {rate_text(*counts(p['train_starts']))})"
                                  if p.get("train_starts") else "") for p in curve["points"])
            expert = curve["one_frame_expert"]
            reached = f"N* = {curve['n_star']}" if curve["n_star"] else f"no N within {within} points of it yet"
            rows.append((f"Can a learner without history reach what one frame allows on {task} ({how})? Held-out "
                         "success by demonstrations N; the one-frame expert",
                         (f"{points}; expert {100 * expert:.0f}%: {reached}" if expert is not None else points)
                         + f" (`{path.stem}`)"))
    return rows


def bench_claims(name: str) -> dict[str, dict]:
    return {c["claim"]: c for c in ((load(name) or {}).get("claims", []))}


def state_rows() -> list[tuple[str, str]]:
    rows = []
    for name, label in BENCH_TABLES:
        claims = bench_claims(name)
        for with_state, without in STATE_PAIRS:
            rows.append((f"Do the papers' inputs (no proprio state) change the verdict? {with_state}, {label}: with "
                         "state / without (`stvla bench`)",
                         " / ".join(claim_text(claims[c]) if c in claims else "not measured yet"
                                    for c in (with_state, without))))
        if STATE_COST in claims:
            rows.append((f"Does the base itself need the state? {STATE_COST}, {label} (`stvla bench`)",
                         claim_text(claims[STATE_COST])))
    return rows


def main() -> None:
    rows = reads_traces_rows() + history_rows() + scaling_rows() + state_rows()
    record("evidence", {"rows": [list(r) for r in rows]}, rows,
           "Evidence: does the policy read its traces, and do traces help where history matters? (issues 18 and 42)")
    print("\n".join(f"{what}: {value}" for what, value in rows))


if __name__ == "__main__":
    run(main)
