"""A/B of CPU attention inside the demo's real train step: bf16 SDPA (before session 11) vs fp32 SDPA under bf16
autocast (`gentron.models.transformer.scaled_dot_product`). usage: python attention_ab.py [WORKDIR]"""
import sys, time, torch, statistics
import torch.nn.functional as F
import gentron.models.transformer as T
from gentron.train.config import load_config
from gentron.train.trainer import Trainer
from gentron.cli.demo import whitening_captions
from gentron.bench import DEMO_CONFIG
work = sys.argv[1] if len(sys.argv) > 1 else "/tmp/attention_ab"
cfg = load_config(DEMO_CONFIG, [f"data.path={work}/data", "data.num=2000", "train.max_minutes=0"])
tr = Trainer(cfg, f"{work}/run", whitening_captions=whitening_captions(cfg), show_progress=False)
new = T.scaled_dot_product
def old(q, k, v, bias=None):
    if bias is not None: bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
for _ in range(10): tr.train_step()
res = {"old": [], "new": []}
for r in range(6):
    for name, fn in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
        T.scaled_dot_product = fn
        t0 = time.time()
        for _ in range(20): tr.train_step()
        res[name].append(20 / (time.time() - t0))
for k, v in res.items(): print(k, "median steps/s %.2f" % statistics.median(v), [round(x, 2) for x in v])
