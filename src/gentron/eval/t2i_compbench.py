"""Sampling T2I-CompBench prompts into the folder layout its official evaluation scripts read.

T2I-CompBench (Huang et al., NeurIPS 2023; github.com/Karine-Huang/T2I-CompBench) ships its prompts as
``examples/dataset/{color,shape,texture,spatial,non_spatial,complex}_val.txt`` (T2I-CompBench++ adds
``numeracy_val.txt`` and ``3d_spatial_val.txt``): one prompt per line (anything after a tab is ignored, as
its own ``inference_eval.py`` does). Its scorers (``BLIPvqa_eval/BLIP_vqa.py --out_dir``,
``UniDet_eval/determine_position_for_eval.py``, ``CLIPScore_eval/CLIP_similarity.py --outpath``,
``3_in_1_eval``) read every image in ``{out_dir}/samples/`` and recover the prompt from the file name,
``{prompt}_{index:06d}.png`` — the text before the last ``_``. Scores are averaged over all images in the
folder, so each category gets its own ``out_dir``.

:func:`sample_t2i_compbench` writes, for each prompt file ``{category}_val.txt``::

    OUT/{category}/samples/{prompt}_{index:06d}.png   # index runs over the whole category, like the
                                                      # official inference_eval.py (base_count)
    OUT/{category}/manifest.jsonl                      # file, prompt, image number, seed
    OUT/README.txt                                     # the commands to score each folder

Images per prompt default to 10 (the paper's protocol). Image ``n`` of every prompt starts from seed
``seed + n`` (the official script re-seeds 42, 43, … per image), so the same prompt always gets the same
images. Existing files are kept (the run resumes). A ``/`` in a prompt cannot appear in a file name and
is written as ``-`` (the manifest flags such prompts as ``renamed``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from PIL import Image

#: T2I-CompBench (and ++) prompt files, and the official scorer for each category.
SCORERS = {
    "color": "BLIPvqa_eval/BLIP_vqa.py --out_dir=OUT/color/",
    "shape": "BLIPvqa_eval/BLIP_vqa.py --out_dir=OUT/shape/",
    "texture": "BLIPvqa_eval/BLIP_vqa.py --out_dir=OUT/texture/",
    "spatial": "UniDet_eval/determine_position_for_eval.py (outpath OUT/spatial/)",
    "3d_spatial": "UniDet_eval/3D_spatial_eval.py (outpath OUT/3d_spatial/)",
    "numeracy": "UniDet_eval/numeracy_eval.py (outpath OUT/numeracy/)",
    "non_spatial": "CLIPScore_eval/CLIP_similarity.py --outpath=OUT/non_spatial/",
    "complex": "3_in_1_eval/3_in_1.py --outpath=OUT/complex/ --data_path=PROMPTS",
}

#: ``sample_fn(prompt, seeds) -> images`` (one image per seed).
PromptSampleFn = Callable[[str, list[int]], list[Image.Image]]


def read_prompt_file(path: Union[str, Path]) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.split("\t")[0].strip() for ln in lines if ln.split("\t")[0].strip()]


def find_prompt_files(prompts: Union[str, Path], categories: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """``{category: file}`` for a T2I-CompBench ``dataset`` folder (``*_val.txt``) or a single file."""
    p = Path(prompts)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(p.glob("*_val.txt"))
        if not files:
            raise FileNotFoundError(f"no *_val.txt prompt files in {p} (expected T2I-CompBench's "
                                    f"examples/dataset/ folder)")
    else:
        raise FileNotFoundError(f"prompt folder or file {p} not found")
    out = {}
    for f in files:
        cat = f.stem[:-4] if f.stem.endswith("_val") else f.stem
        out[cat] = f
    if categories:
        missing = [c for c in categories if c not in out]
        if missing:
            raise ValueError(f"no prompt file for {missing}; found {sorted(out)}")
        out = {c: out[c] for c in categories}
    return out


def safe_name(prompt: str) -> str:
    return prompt.replace("/", "-").replace("\0", "")


def sample_t2i_compbench(sample_fn: PromptSampleFn, prompts: Union[str, Path], out: Union[str, Path],
                         images_per_prompt: int = 10, seed: int = 42, categories: Optional[Sequence[str]] = None,
                         limit: Optional[int] = None, log: Optional[Callable[[str], None]] = print) -> dict[str, int]:
    """Sample every prompt file into ``out``; returns images written (or kept) per category."""
    out = Path(out)
    counts = {}
    for cat, file in find_prompt_files(prompts, categories).items():
        texts = read_prompt_file(file)[:limit] if limit else read_prompt_file(file)
        samples = out / cat / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        manifest = []
        index = 0
        for text in texts:
            names = [f"{safe_name(text)}_{index + n:06d}.png" for n in range(images_per_prompt)]
            seeds = [seed + n for n in range(images_per_prompt)]
            todo = [n for n, name in enumerate(names) if not (samples / name).is_file()]
            if todo:
                images = sample_fn(text, [seeds[n] for n in todo])
                for n, img in zip(todo, images):
                    img.save(samples / names[n])
            for n, name in enumerate(names):
                manifest.append({"file": f"samples/{name}", "prompt": text, "image": n, "seed": seeds[n],
                                 "renamed": safe_name(text) != text})
            index += images_per_prompt
        (out / cat / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
        counts[cat] = index
        if log:
            log(f"{cat}: {len(texts)} prompts x {images_per_prompt} images -> {samples}")
    lines = ["Score each folder with T2I-CompBench's official scripts (run from its repository):", ""]
    for cat in counts:
        lines.append(f"{cat}: {SCORERS.get(cat, 'see the T2I-CompBench README').replace('OUT', str(out))}")
    (out / "README.txt").write_text("\n".join(lines) + "\n")
    return counts


def pipeline_prompt_sampler(pipe, steps: int = 20, guidance: float = 4.5, height: Optional[int] = None,
                            width: Optional[int] = None, batch_size: int = 10) -> PromptSampleFn:
    import torch

    def sample(prompt: str, seeds: list[int]) -> list[Image.Image]:
        cfg = pipe.transformer.config
        out: list[Image.Image] = []
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start:start + batch_size]
            h = (height or cfg.sample_size * _vae_factor(pipe)) // _vae_factor(pipe)
            w = (width or cfg.sample_size * _vae_factor(pipe)) // _vae_factor(pipe)
            latents = torch.stack([torch.randn((cfg.in_channels, h, w), generator=torch.Generator().manual_seed(s))
                                   for s in chunk])
            out.extend(pipe([prompt] * len(chunk), num_inference_steps=steps, guidance_scale=guidance,
                            latents=latents, height=height, width=width, progress=False).images)
        return out

    return sample


def _vae_factor(pipe) -> int:
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return 1
    return 2 ** (len(vae.config.block_out_channels) - 1)


__all__ = ["sample_t2i_compbench", "find_prompt_files", "read_prompt_file", "pipeline_prompt_sampler", "SCORERS"]
