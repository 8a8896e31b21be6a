"""`gentron eval shapes`: sample the held-out prompt suites and read the images back with the detector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from gentron.eval.detector import chance_levels, detect, score
from gentron.eval.prompts import CATEGORIES, eval_suite


def evaluate_shapes(
    pipe,
    split: str = "heldout",
    n_per_category: int = 32,
    steps: int = 20,
    guidance: float = 4.5,
    seed: int = 0,
    batch_size: int = 64,
    categories: tuple[str, ...] = CATEGORIES,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-category accuracy of a pipeline on the shapes world, next to chance level.

    Every prompt gets its own fixed seed (``seed + position``), so a report is reproducible and
    independent of the batch size.
    """
    suites = {cat: eval_suite(cat, split=split, n=n_per_category) for cat in categories}
    prompts = [p for cat in categories for p in suites[cat]]
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        size = pipe.transformer.config.sample_size
        latents = torch.stack([
            torch.randn((pipe.transformer.config.in_channels, size, size),
                        generator=torch.Generator().manual_seed(seed + start + i))
            for i in range(len(chunk))
        ])
        out = pipe([p.prompt for p in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   latents=latents, progress=progress)
        images.extend(out.images)
    per_prompt, correct = [], {cat: [] for cat in categories}
    for p, img in zip(prompts, images):
        dets = detect(img)
        s = score(p, dets)
        ok = bool(s[p.category]) if p.category in s else bool(all(s.values()))
        correct[p.category].append(ok)
        per_prompt.append({"category": p.category, "prompt": p.prompt, "correct": ok,
                           "criteria": {k: bool(v) for k, v in s.items()},
                           "detected": [f"{d.color} {d.shape}" for d in dets]})
    accuracy = {cat: sum(v) / max(len(v), 1) for cat, v in correct.items()}
    chance = chance_levels(split=split, n=n_per_category)
    return {
        "accuracy": accuracy,
        "chance": {cat: float(chance.get(cat, float("nan"))) for cat in categories},
        "split": split,
        "prompts_per_category": n_per_category,
        "sampler": type(pipe.scheduler).__name__,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "per_prompt": per_prompt,
        "_images": images,  # removed by write_report; kept for grids
    }


def write_report(report: dict[str, Any], out_json: Path, grid_path: Optional[Path] = None,
                 grid_per_category: int = 8) -> Path:
    """Write the JSON report (and a sample grid PNG beside it); returns the grid path."""
    from gentron.pipelines import make_grid

    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    images = report.pop("_images", None)
    out_json.write_text(json.dumps(report, indent=1))
    grid_path = grid_path or out_json.with_name(out_json.stem + "-samples.png")
    if images:
        picks, caps = [], []
        for cat in report["accuracy"]:
            idx = [i for i, p in enumerate(report["per_prompt"]) if p["category"] == cat][:grid_per_category]
            picks += [images[i] for i in idx]
            caps += [("✓ " if report["per_prompt"][i]["correct"] else "✗ ") + report["per_prompt"][i]["prompt"] for i in idx]
        caps = [c.replace("✓", "+").replace("✗", "-") for c in caps]  # PIL's default font is ASCII
        make_grid(picks, captions=caps, cols=grid_per_category, scale=max(1, 160 // picks[0].size[0])).save(grid_path)
    return grid_path
