"""The paper-reproduction benchmark (`stvla bench`) and the recorder behind BENCHMARKS.md.

- record:   figures with their provenance -> benchmarks/results/<name>.json -> BENCHMARKS.md
- cells:    cached units of work, keyed by their configuration
- protocol: `BenchConfig`, the rows, `run_bench` (collect, pre-train, select targets, fine-tune, evaluate)
- report:   tables, claims and the plot
"""
