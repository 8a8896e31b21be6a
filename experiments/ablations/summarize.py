"""Aggregate ``run.py`` results into markdown tables (mean ± sample std over seeds, per category and split).

    python experiments/ablations/summarize.py runs/ablations [--study conditioning] > table.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {sd:.3f}"


def summarize(root: Path, study: str | None = None) -> str:
    results = [json.loads(p.read_text()) for p in sorted(Path(root).glob("*/*/seed*/result.json"))]
    if study:
        results = [r for r in results if r["study"] == study]
    by_study: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_study[r["study"]][r["arm"]].append(r)
    out = []
    for st, arms in by_study.items():
        any_r = next(iter(arms.values()))[0]
        cats = list(any_r["compbench"])
        splits = list(any_r["overall"])
        out.append(f"### {st}\n")
        hw = any_r["hardware"]
        out.append(f"Hardware: {hw['cpu_count']} CPU cores ({hw['processor']}), torch {hw['torch']}, "
                   f"{hw['torch_threads']} threads; eval: {any_r['eval_prompts_per_suite']} prompts per "
                   f"(category, split), {any_r['eval_steps']} DPM steps, CFG {any_r['guidance']}, suite "
                   f"{any_r['suite_version']}. Cells: mean ± std over seeds.\n")
        for split in splits:
            name = {"train": "seen combinations", "heldout": "held-out combinations"}[split]
            out.append(f"**{name}**\n")
            out.append("| arm | params | seeds | steps | train min | " + " | ".join(cats) + " | mean |")
            out.append("|---|---|---|---|---|" + "---|" * (len(cats) + 1))
            for arm, rs in arms.items():
                flag = " ⚠ capped" if any(r.get("stopped_early") for r in rs) else ""
                row = [arm + flag, f"{rs[0]['params'] / 1e6:.2f}M", ",".join(str(r["seed"]) for r in rs),
                       "/".join(sorted({str(r["train_steps"]) for r in rs})),
                       f"{statistics.fmean(r['train_minutes'] for r in rs):.1f}"]
                row += [fmt([r["compbench"][c][split] for r in rs]) for c in cats]
                row.append(fmt([r["overall"][split] for r in rs]))
                out.append("| " + " | ".join(row) + " |")
            chance = {c: any_r["chance"][c][split] for c in cats}
            out.append("| *chance* | | | | | " + " | ".join(f"{chance[c]:.3f}" for c in cats) + " | |")
            out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--study")
    args = p.parse_args(argv)
    print(summarize(Path(args.root), args.study))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
