"""Twelfth round: does `train.compile` (regional torch.compile of every block) speed up the demo's real train step
on this CPU, and what does compiling cost? Two trainers on the same data, eager and compiled, timed in alternating
rounds. usage: python compile_ab.py [WORKDIR] [--rounds 6] [--steps 20]"""
import argparse
import statistics
import time

from gentron.bench import DEMO_CONFIG
from gentron.cli.demo import whitening_captions
from gentron.train.config import load_config
from gentron.train.trainer import Trainer

ap = argparse.ArgumentParser()
ap.add_argument("work", nargs="?", default="/tmp/compile_ab")
ap.add_argument("--rounds", type=int, default=6)
ap.add_argument("--steps", type=int, default=20)
args = ap.parse_args()
trainers = {}
for name, compile_ in (("eager", False), ("compiled", True)):
    cfg = load_config(DEMO_CONFIG, [f"data.path={args.work}/data", "data.num=2000", "train.max_minutes=0",
                                    f"train.compile={str(compile_).lower()}"])
    tr = Trainer(cfg, f"{args.work}/run-{name}", whitening_captions=whitening_captions(cfg), show_progress=False)
    t0 = time.time()
    for _ in range(3):  # the compiled trainer traces and compiles here (and recompiles once if shapes vary)
        tr.train_step()
    print(f"{name}: first 3 steps {time.time() - t0:.1f} s", flush=True)
    for _ in range(10):
        tr.train_step()
    trainers[name] = tr
rates = {name: [] for name in trainers}
for r in range(args.rounds):
    for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
        t0 = time.time()
        for _ in range(args.steps):
            trainers[name].train_step()
        rates[name].append(args.steps / (time.time() - t0))
for name, v in rates.items():
    print(f"{name}: median {statistics.median(v):.2f} steps/s", [round(x, 2) for x in v])
print(f"compiled / eager: {statistics.median(rates['compiled']) / statistics.median(rates['eager']):.2f}x")
