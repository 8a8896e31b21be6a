"""Does a T2V model read the motion word, and at which noise level? (docs/video.md, session 10)

For single-object training clips (seen colour/shape pairs) this noises the clip to timestep t, asks the model for
its x0 prediction under each of the four motion captions ("... moving to the right / left / up / down"), and
reports per t:

* ``pick``: how often the true caption gives the lowest x0 error of the four (chance 0.25): the model uses the
  direction word at this noise level;
* ``gap``: mean (wrong − true) x0 MSE, ×1e3;
* ``drift``: the predicted object's centroid displacement from the first to the last frame along the captioned
  direction, in pixels (the clips travel 9.6–13.4 px): does the prediction move the way the caption says? At
  t = 999 the input is nearly pure noise, so this is the motion the model commits to before anything is visible.

    python experiments/video_mfg/direction_probe.py RUN_DIR [--clips 32]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo_recipe"))

TIMESTEPS = (999, 950, 900, 800, 600, 400, 200)


def main(run: str, clips: int, frames: int, seed: int) -> None:
    import numpy as np
    from binding_score import centroid

    from gentron.cli.main import load_pipeline
    from gentron.data.shapes import MOTION_PHRASES, MOTIONS, ShapesVideoWorld, _noun
    from gentron.diffusion.gaussian import GaussianDiffusion
    from gentron.train.config import load_config
    from gentron.train.trainer import diffusion_config

    torch.set_num_threads(2)
    run_dir = Path(run)
    cfg = load_config(run_dir / "config.yaml", [])
    diffusion = GaussianDiffusion(diffusion_config(cfg))
    pipe = load_pipeline(str(run_dir), "cpu", None)
    model, encoder = pipe.transformer.eval(), pipe.text_encoders[0]
    world = ShapesVideoWorld(resolution=model.config.sample_size, seed=seed, num_frames=frames)
    directions = list(MOTIONS)

    scenes = [world.sample_scene(world.rng_for(i, "train"), "train", kind="single") for i in range(clips)]
    true = torch.tensor([directions.index(vs.motions[0]) for vs in scenes])
    x0 = torch.stack([torch.stack([torch.from_numpy(np.asarray(f, dtype=np.float32)) for f in
                                   world.render(vs)]) for vs in scenes]) / 127.5 - 1  # (B, T, H, W, 3)
    x0 = x0.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W)
    captions = [[f"{_noun(vs.objects[0])} {MOTION_PHRASES[d]}" for d in directions] for vs in scenes]
    emb = encoder.encode([c for row in captions for c in row])
    g = torch.Generator().manual_seed(seed)
    print(f"{run}: {clips} single-object clips, {frames} frames")
    print("| t | pick (chance 0.25) | gap x1e3 | drift along captioned direction (px), true caption | wrong (opposite) |")
    print("|---|---|---|---|---|")
    for t in TIMESTEPS:
        noise = torch.randn(x0.shape, generator=g)
        tt = torch.full((clips,), t)
        xt = diffusion.q_sample(x0, tt, noise)
        xt4, tt4 = xt.repeat_interleave(4, 0), tt.repeat_interleave(4, 0)
        with torch.no_grad():
            out = model(xt4, tt4, encoder_hidden_states=emb.tokens.float(), encoder_attention_mask=emb.mask,
                        pooled_projections=emb.pooled.float()).sample
        pred = diffusion.predict_x0(out[:, :3], xt4, tt4).clamp(-1, 1).view(clips, 4, *x0.shape[1:])
        mse = ((pred - x0[:, None]) ** 2).mean(dim=(2, 3, 4, 5))  # (B, 4)
        pick = (mse.argmin(1) == true).float().mean().item()
        mse_true = mse[torch.arange(clips), true]
        gap = ((mse.sum(1) - mse_true) / 3 - mse_true).mean().item()
        drift_true, drift_opp = [], []
        for b, vs in enumerate(scenes):
            d = vs.motions[0]
            ux, uy = MOTIONS[d]
            opposite = next(m for m, v in MOTIONS.items() if v == (-ux, -uy))
            for k, store in ((directions.index(d), drift_true), (directions.index(opposite), drift_opp)):
                clip = pred[b, k].permute(1, 2, 3, 0)  # (T, H, W, 3)
                (xa, ya), (xb, yb) = centroid(clip[0], vs.objects[0].color), centroid(clip[-1], vs.objects[0].color)
                store.append((xb - xa) * ux + (yb - ya) * uy)
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        print(f"| {t} | {pick:.2f} | {gap * 1e3:+.2f} | {mean(drift_true):+.2f} | {mean(drift_opp):+.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.run, a.clips, a.frames, a.seed)
