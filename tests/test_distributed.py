"""Two processes on CPU (gloo): DDP and FSDP2 reproduce one process with the same global batch, and a
2-process run resumed from a checkpoint is bit-identical to one trained straight through.

The multi-process part runs as ONE launch of this file as a script (2 ranks, one process group, several
short runs in sequence) to keep process start-up off the clock; `torchrun -m gentron train` itself is
exercised by `test_torchrun_cli`.

Tolerance: per-step losses of 2 processes vs 1 process agree to 1e-5 relative (measured ~1e-7: the only
differences are the order of float additions in the gradient all-reduce and the loss mean).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_overrides  # noqa: E402

from gentron.train.distributed import free_port  # noqa: E402

RTOL = 1e-5
STEPS = 4
BASE = ["train.steps=4", "train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=1",
        "sample.prompts=[]", "train.grad_accum=2"]


def _losses(run_dir: Path) -> list[float]:
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs]


def _launch_ranks(argv: list[str], world: int = 2, timeout: int = 600) -> None:
    """Start ``world`` processes with the environment torchrun would give them and wait for all."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out)
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"


# -- worker (runs inside each rank) --------------------------------------------------------------


def _worker(data: str, out: str) -> None:
    import torch.distributed as dist

    from gentron.train import distributed as D
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    out_dir = Path(out)

    def run(name, parallel, steps, resume=None, extra=()):
        cfg = load_config(None, tiny_overrides(data) + BASE + ["train.batch_size=4", f"train.parallel={parallel}",
                                                               f"train.steps={steps}", *extra])
        t = Trainer(cfg, out_dir / name, resume=resume, log=lambda s: None, show_progress=False)
        t.fit()
        state = {k: D.full(v).float() for k, v in t.model.state_dict().items()}
        ema = t.ema.full_state_dict()
        if dist.get_rank() == 0:
            from safetensors.torch import save_file

            save_file({**state, **{f"ema.{k}": v.contiguous() for k, v in ema.items()}}, out_dir / f"{name}.safetensors")
        return t

    run("ddp", "ddp", STEPS)
    run("ddp_resumed", "ddp", STEPS // 2)
    t = run("ddp_resumed", "ddp", STEPS, resume="auto")
    assert t.step == STEPS
    ac = ["train.activation_checkpointing=every_k", "train.ac_every=2"]
    run("fsdp", "fsdp", STEPS, extra=ac)
    run("fsdp_resumed", "fsdp", STEPS // 2, extra=ac)
    run("fsdp_resumed", "fsdp", STEPS, resume="auto", extra=ac)

    # A wall-clock budget with an lr that decays by wall time (the demo's wsd) and ends before a reserve of measured
    # steps: every rank must read the same clock and the same reserve, or each optimizer applies its own lr and the
    # replicas drift apart.
    timed = ["train.batch_size=4", "train.parallel=ddp", "train.steps=100000", "train.max_minutes=0.05",
             "train.lr_schedule=wsd", "train.lr_decay_fraction=1.0", "train.warmup_steps=0", "train.checkpoint_every=0",
             "train.reserve_steps=5"]
    t = Trainer(load_config(None, tiny_overrides(data) + BASE + timed), out_dir / "timed", log=lambda s: None,
                show_progress=False)
    t.start_time = time.time()  # each rank its own start, as processes that finished loading at different times
    t.fit()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in t.model.state_dict().items()},
              out_dir / f"timed.rank{dist.get_rank()}.safetensors")

    # The caption bank split across the ranks (batch i on rank i mod 2, then gathered) against one process's bank
    from gentron.train.trainer import TextBank

    enc, captions = t.text_encoders[0], t.data.captions
    shared = TextBank(enc, captions, t.device, batch=2, show_progress=False, ctx=t.ctx)
    alone = TextBank(enc, captions, t.device, batch=2, show_progress=False)
    save_file({f"{kind}.{k}": getattr(bank, k).contiguous() for kind, bank in (("shared", shared), ("alone", alone))
               for k in ("tokens", "mask", "pooled")}, out_dir / f"bank.rank{dist.get_rank()}.safetensors")
    dist.barrier()
    dist.destroy_process_group()


# -- tests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_process_runs(shapes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _launch_ranks([__file__, "--worker", str(shapes_data), str(out)])
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def test_two_processes_match_one_process(shapes_data, two_process_runs, tmp_path):
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    cfg = load_config(None, tiny_overrides(shapes_data) + BASE + ["train.batch_size=8"])
    ref = Trainer(cfg, tmp_path / "one", log=lambda s: None, show_progress=False)
    ref.fit()
    one = _losses(tmp_path / "one")
    assert len(one) == STEPS
    for name in ("ddp", "fsdp"):
        two = _losses(two_process_runs / name)
        rel = max(abs(a - b) / abs(a) for a, b in zip(one, two))
        assert rel < RTOL, (name, one, two, rel)
        w = _weights(two_process_runs / f"{name}.safetensors")
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(w[k], v, rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_two_process_resume_is_bit_identical(two_process_runs, name):
    straight, resumed = two_process_runs / name, two_process_runs / f"{name}_resumed"
    assert _losses(straight) == _losses(resumed)
    a, b = _weights(two_process_runs / f"{name}.safetensors"), _weights(two_process_runs / f"{name}_resumed.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpts = sorted((resumed / "checkpoints").glob("step_*"))
    assert ckpts and (ckpts[-1] / "COMPLETE").is_file()
    assert (ckpts[-1] / "rng_rank00000.json").is_file() and (ckpts[-1] / "rng_rank00001.json").is_file()
    assert (ckpts[-1] / "dcp").is_dir() == (name == "fsdp")
    meta = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    assert meta["world_size"] == 2 and meta["data"]["global_batch"] == 16 and meta["gentron_version"]


def test_ranks_of_a_time_budgeted_run_share_one_clock(two_process_runs):
    """With `max_minutes` (and `reserve_steps`) the lr schedule runs on wall time; both ranks' replicas stay
    bit-identical."""
    a, b = (_weights(two_process_runs / f"timed.rank{r}.safetensors") for r in (0, 1))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lrs = [json.loads(line)["lr"] for line in (two_process_runs / "timed" / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) >= 3 and lrs[-1] < 0.5 * lrs[0]  # the lr did follow the clock down


def test_ranks_share_the_caption_encoding_and_get_one_processs_bank(two_process_runs):
    """Each rank encodes every other batch of captions and the batches are gathered: every rank then holds exactly
    the bank one process builds alone."""
    for r in (0, 1):
        bank = _weights(two_process_runs / f"bank.rank{r}.safetensors")
        assert bank["alone.tokens"].shape[0] > 4  # more than one batch per rank: the split is exercised
        for k in ("tokens", "mask", "pooled"):
            assert torch.equal(bank[f"shared.{k}"], bank[f"alone.{k}"]), (r, k)


def test_torchrun_cli(shapes_data, tmp_path):
    """`torchrun --nproc_per_node=2 -m gentron train CFG` end to end (DDP, gloo). torchrun is run as
    ``python -m torch.distributed.run`` with this interpreter, so a `torchrun` of another Python on PATH is not used."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "gentron", "train",
            str(REPO / "configs" / "shapes-tiny.yaml"), "--out", str(run)]
    for s in tiny_overrides(shapes_data) + ["train.steps=2", "train.batch_size=2", "train.parallel=ddp",
                                            "train.checkpoint_every=0", "sample.prompts=[]"]:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = r.stdout + r.stderr
    assert "global batch 4 (= 2 per rank × 2 processes × 1 accumulation)" in text
    assert text.count("params |") == 1  # rank 0 logs only
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "checkpoints" / "step_0000002" / "COMPLETE").is_file()
    assert (run / "pipeline" / "model_index.json").is_file()


def _proc_state(pid: int | str) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process from /proc, or None once it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    states = {int(d.name): _proc_state(d.name) for d in Path("/proc").glob("[0-9]*")}
    return [kid for kid, st in states.items() if st is not None and st[1] == pid and st[0] != "Z"]


def _alive(pid: int) -> bool:
    st = _proc_state(pid)
    return st is not None and st[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_local_ranks_end_when_their_launcher_is_killed():
    """`run_local_ranks` (the CPU demo's training processes): a launcher killed with SIGKILL takes its ranks with
    it (they get SIGTERM, which a Trainer answers with a checkpoint), instead of leaving orphans that train on.
    The launcher ignores SIGINT, as a shell's background job (`gentron demo &`, nohup) does: torch's own
    parent-death signal is SIGINT, which such ranks inherit ignored."""
    launcher = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                 "from gentron.train.distributed import run_local_ranks; "
                                 "run_local_ranks(time.sleep, 2, 300)"])
    ranks: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            ranks = [p for p in _children(launcher.pid)
                     if b"multiprocessing.spawn" in (Path("/proc") / str(p) / "cmdline").read_bytes()]
            if len(ranks) == 2:
                break
            time.sleep(0.2)
        assert len(ranks) == 2, "the launcher did not start its two ranks"
        time.sleep(5)  # let them get into time.sleep (the other path, a launcher dead before, is checked too)
        launcher.kill()
        launcher.wait()
        deadline = time.time() + 30
        while any(_alive(p) for p in ranks) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in ranks), "ranks outlived their killed launcher"
    finally:
        launcher.kill()
        for p in ranks:
            if _alive(p):
                os.kill(p, 9)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _worker(sys.argv[2], sys.argv[3])
