"""CLIP-Score with a local CLIP folder (``transformers`` ``CLIPModel`` + processor; nothing downloaded).

Definition (as in torchmetrics' ``CLIPScore`` and the T2I literature's "CLIP-Score" column, e.g. GenTron
Table 4): ``100 · max(cos(E_img(x), E_txt(c)), 0)`` averaged over (image, caption) pairs. The original
CLIPScore paper (Hessel et al. 2021) scales by 2.5 instead of 100 — divide by 40 to compare. Published
numbers use ViT-L/14 (``openai/clip-vit-large-patch14``) on 30K MS-COCO captions; values from other CLIP
models are not comparable with them.

Images go through the folder's own ``CLIPImageProcessor`` (resize shortest side bicubic, center crop,
CLIP mean/std), texts through its tokenizer truncated to the model's context (77 tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
from PIL import Image


def load_clip(path: Union[str, Path], device: str = "cpu"):
    """(model, processor) from a local folder written by ``CLIPModel.save_pretrained`` and
    ``CLIPProcessor.save_pretrained``."""
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a CLIP model folder (no config.json); gentron never downloads models")
    try:
        model = transformers.CLIPModel.from_pretrained(str(path), local_files_only=True)
        processor = transformers.CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"could not load a CLIP model + processor from {path}: {type(e).__name__}: {e}") from e
    return model.to(device).eval(), processor


@torch.no_grad()
def clip_scores(images: Sequence[Image.Image], captions: Sequence[str], model, processor,
                batch_size: int = 32) -> torch.Tensor:
    """Per-pair CLIP-Score (100 · clipped cosine), shape (N,)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    device = next(model.parameters()).device
    max_len = model.config.text_config.max_position_embeddings
    out = []
    for start in range(0, len(images), batch_size):
        ims = [im.convert("RGB") for im in images[start:start + batch_size]]
        txt = list(captions[start:start + batch_size])
        pix = processor(images=ims, return_tensors="pt")["pixel_values"].to(device)
        tok = processor(text=txt, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
        img_emb = model.get_image_features(pixel_values=pix)
        txt_emb = model.get_text_features(input_ids=tok["input_ids"].to(device),
                                          attention_mask=tok["attention_mask"].to(device))
        img_emb = getattr(img_emb, "pooler_output", img_emb)  # tensors in transformers 4, outputs in some 5.x
        txt_emb = getattr(txt_emb, "pooler_output", txt_emb)
        cos = torch.nn.functional.cosine_similarity(img_emb.float(), txt_emb.float(), dim=-1)
        out.append(100 * cos.clamp(min=0))
    return torch.cat(out).cpu()


def clip_score(images: Sequence[Image.Image], captions: Sequence[str], clip_dir: Union[str, Path],
               batch_size: int = 32, device: str = "cpu") -> dict:
    model, processor = load_clip(clip_dir, device)
    s = clip_scores(images, captions, model, processor, batch_size)
    return {"clip_score": float(s.mean()), "std": float(s.std()) if len(s) > 1 else 0.0, "num": int(len(s)),
            "clip": str(clip_dir), "definition": "100 * max(cos, 0), mean over pairs"}


__all__ = ["load_clip", "clip_scores", "clip_score"]
