"""Steps/s of a train step (fwd+bwd+AdamW, bf16 autocast) for candidate model shapes; random data.
usage: python bench.py NAME '{"depth":6,...}' [batch] [seconds]"""
import json, sys, time, torch
from gentron.models.transformer import GenTronTransformer, zoo_config
import os; BF16 = os.environ.get("BF16", "0") == "1"
name, ov = sys.argv[1], json.loads(sys.argv[2])
B = int(sys.argv[3]) if len(sys.argv) > 3 else 32
secs = float(sys.argv[4]) if len(sys.argv) > 4 else 20
kw = zoo_config(name, conditioning=ov.pop("conditioning", "cross-attn"), sample_size=32, in_channels=3, learn_sigma=False,
                text_dims=[384], pooled_dims=[384])
kw.update(ov)
m = GenTronTransformer(**kw)
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
n = sum(p.numel() for p in m.parameters())
x = torch.randn(B, 3, 32, 32); t = torch.randint(0, 1000, (B,))
ctx = torch.randn(B, 24, 384); mask = torch.ones(B, 24, dtype=torch.bool); pooled = torch.randn(B, 384)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
        out = m(x, t, encoder_hidden_states=(ctx,), encoder_attention_mask=(mask,), pooled_projections=(pooled,)).sample
    loss = (out.float() - x).pow(2).mean(); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(3): step()
t0 = time.time(); k = 0
while time.time() - t0 < secs: step(); k += 1
dt = time.time() - t0
print(f"{name} {json.dumps(sys.argv[2])} B={B} params={n/1e6:.2f}M steps/s={k/dt:.2f} img/s={k*B/dt:.0f}")
