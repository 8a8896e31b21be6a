"""Peak memory of one training step vs the activation-checkpointing setting (a benchmark, not a test).

    python bench/memory_ac.py --model GenTron-S/2 --resolution 64 --batch 8
    python bench/memory_ac.py --device cuda --model GenTron-XL/2 --resolution 256 --batch 16

Each setting (off, every_k with k=2 and 4, all) runs in a fresh subprocess so that peaks do not mix.
Measurement:
  * CUDA: ``torch.cuda.max_memory_allocated`` (bytes held by torch's allocator; exact for tensors).
  * CPU: peak resident set size of the process (``resource.getrusage().ru_maxrss``) during the step, minus
    the RSS just before it (from /proc/self/statm), i.e. the extra memory one forward+backward needs.
    RSS includes allocator slack, so treat differences below a few MiB as noise. (tracemalloc does not
    see torch's C++ allocations, so it is not used.)
The text encoder is replaced by random token embeddings (its memory is the same in every setting).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args) -> dict:
    import torch

    from gentron.models.transformer import GenTronTransformer, zoo_config
    from gentron.train import distributed as D

    torch.manual_seed(0)
    device = torch.device(args.device)
    kw = zoo_config(args.model, conditioning="cross-attn", sample_size=args.resolution // args.vae_factor,
                    in_channels=args.channels, learn_sigma=False, text_dims=[args.text_dim], pooled_dims=[args.text_dim])
    model = GenTronTransformer(**kw).to(device)
    mode, k = args.setting.split(":") if ":" in args.setting else (args.setting, "2")
    blocks = D.apply_activation_checkpointing(model, mode, int(k))
    size = args.resolution // args.vae_factor
    x = torch.randn(args.batch, args.channels, size, size, device=device)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    text = torch.randn(args.batch, args.text_len, args.text_dim, device=device)
    pooled = torch.randn(args.batch, args.text_dim, device=device)
    # one warm-up step so lazily allocated buffers don't count against the first setting
    model(x, t, encoder_hidden_states=(text,), pooled_projections=(pooled,)).sample.square().mean().backward()
    model.zero_grad(set_to_none=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    model(x, t, encoder_hidden_states=(text,), pooled_projections=(pooled,)).sample.square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        how = "peak RSS (ru_maxrss) - RSS before step"
    return {"setting": args.setting, "checkpointed_blocks": len(blocks), "depth": len(model.blocks),
            "peak_step_mib": peak / 2**20, "measured_by": how}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="GenTron-S/2")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--vae-factor", type=int, default=1)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--settings", default="off,every_k:4,every_k:2,all")
    p.add_argument("--setting", help=argparse.SUPPRESS)  # internal: measure one setting in this process
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.setting:
        print(json.dumps(measure(args)))
        return
    rows = []
    for setting in args.settings.split(","):
        cmd = [sys.executable, __file__, "--setting", setting, "--model", args.model, "--resolution",
               str(args.resolution), "--vae-factor", str(args.vae_factor), "--channels", str(args.channels),
               "--batch", str(args.batch), "--text-dim", str(args.text_dim), "--text-len", str(args.text_len),
               "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print(f"{args.model} @ {args.resolution}px, batch {args.batch}, {args.device} ({rows[0]['measured_by']})")
    print(f"{'setting':<12} {'ckpt blocks':>11} {'peak MiB':>10}")
    for r in rows:
        print(f"{r['setting']:<12} {r['checkpointed_blocks']:>5}/{r['depth']:<5} {r['peak_step_mib']:>10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
