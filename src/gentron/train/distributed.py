"""Multi-process training: process groups from torchrun's environment, DDP / FSDP2 wrapping, activation
checkpointing, rank-sharded batches, all-reduce helpers and `torch.distributed.checkpoint` I/O.

The `Trainer` has a single loop; everything here is a wrapping step around it. A single process (no
``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) never touches `torch.distributed`.

Launch with ``torchrun --nproc_per_node=N -m gentron train CFG.yaml`` (see docs/training-at-scale.md).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import signal
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

PARALLEL_MODES = ("none", "ddp", "fsdp")
AC_MODES = ("off", "all", "every_k")


@dataclass
class DistContext:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this context created the process group (and destroys it in `close`)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group torchrun (or SLURM + torchrun) describes in the environment.

    Backend: NCCL on CUDA, gloo on CPU. On CUDA each process takes ``cuda:LOCAL_RANK``. Returns a
    single-process context when ``WORLD_SIZE`` is unset or 1.
    """
    world = env_world_size()
    if world <= 1 and not dist.is_initialized():
        return DistContext(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
        owns = True
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device,
                       owns_group=owns)


def free_port() -> int:
    """A free TCP port on this machine for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local_ranks(fn: Callable[..., None], world: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``world`` fresh processes on this machine, each with the environment torchrun would give
    it (``RANK``, ``WORLD_SIZE``, rendezvous on localhost), so a `Trainer` built inside joins one process group.
    ``fn`` must be importable (a module-level function); an exception in any rank is raised here."""
    import torch.multiprocessing as mp

    mp.spawn(_local_rank_entry, args=(world, free_port(), os.getpid(), fn, args), nprocs=world, join=True)


def _local_rank_entry(rank: int, world: int, port: int, parent: int, fn: Callable[..., None], args: tuple) -> None:
    _terminate_with_parent(parent)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    fn(*args)


def _terminate_with_parent(parent: int) -> None:
    """Linux: have the kernel send this process SIGTERM when ``parent`` (the launcher) dies, even by SIGKILL.
    Why: torch's spawn asks for SIGINT, which a background job (`gentron demo &`, nohup) ignores, so a killed demo
    left its ranks training on as orphans for the rest of their budget, holding the cores. SIGTERM is what the
    trainer answers with a checkpoint and a clean exit."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


# ------------------------------------------------------------------------------------------------
# Collectives (no-ops in a single process)
# ------------------------------------------------------------------------------------------------


def all_reduce_mean(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if not ctx.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / ctx.world


def all_reduce_max(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise maximum of a small host tensor over all ranks (returned on the host)."""
    if not ctx.enabled:
        return values
    t = values.to(ctx.device).clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (pickled over the process group, never read from disk)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (pickled over the process group)."""
    if not ctx.enabled:
        return [obj]
    box: list[Any] = [None] * ctx.world
    dist.all_gather_object(box, obj)
    return box


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def average_gradients(params: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """All-reduce-average gradients of parameters that no DDP/FSDP wrapper syncs (trainable text encoders)."""
    if not ctx.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(ctx.world)


# ------------------------------------------------------------------------------------------------
# Data sharding
# ------------------------------------------------------------------------------------------------


def rank_slice(global_batch: int, ctx: DistContext) -> slice:
    """This rank's contiguous slice of a global micro-batch (rank r takes [r*b, (r+1)*b))."""
    b = global_batch // ctx.world
    return slice(ctx.rank * b, (ctx.rank + 1) * b)


def sample_seed(seed: int, step: int, position: int) -> int:
    """A 63-bit seed for one sample of one (micro-)step, independent of rank and world size (splitmix64)."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB + 0x632BE59BD9B4E019)
    x &= 2**64 - 1
    for mul, shift in ((0xBF58476D1CE4E5B9, 30), (0x94D049BB133111EB, 27)):
        x ^= x >> shift
        x = (x * mul) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


# ------------------------------------------------------------------------------------------------
# Activation checkpointing and wrapping
# ------------------------------------------------------------------------------------------------


def ac_block_ids(num_blocks: int, mode: str, every: int) -> list[int]:
    """Which transformer blocks recompute their activations in backward."""
    if mode == "off":
        return []
    if mode == "all":
        return list(range(num_blocks))
    if mode == "every_k":
        return [i for i in range(num_blocks) if i % max(every, 1) == 0]
    raise ValueError(f"activation_checkpointing must be one of {AC_MODES}, got {mode!r}")


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 2) -> list[int]:
    """Wrap the forward of selected ``model.blocks`` in non-reentrant `torch.utils.checkpoint`.

    Done per module instance (no wrapper module), so parameter names and checkpoints are unchanged, and it
    composes with FSDP2 (whose hooks run around the block's ``__call__``, outside the checkpointed region).
    """
    from torch.utils.checkpoint import checkpoint

    ids = ac_block_ids(len(model.blocks), mode, every)
    for i in ids:
        block = model.blocks[i]
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        block.forward = forward
    return ids


def compile_blocks(blocks: nn.ModuleList, device: torch.device) -> None:
    """Regional compilation (as torchtitan): each transformer block is compiled in place and the glue stays eager.

    One block graph is traced once and reused by every block of the same structure, so compile time does not grow
    with depth; in place (``Module.compile``), so parameter names and checkpoints are unchanged. Applied after
    activation checkpointing and before FSDP2, the order torchtitan uses. On CPU, inductor generates C++: without a
    compiler it would fail deep inside the first step, so that is a config error here."""
    if torch.device(device).type == "cpu" and not any(shutil.which(c) for c in ("g++", "clang++", "c++")):
        from gentron.train.config import ConfigError

        raise ConfigError("torch.compile on CPU needs a C++ compiler (g++ or clang++) for its CPU backend; install "
                          "one, or compile nothing (train.compile=false; `gentron bench` without --compile)")
    for block in blocks:
        block.compile()


def wrap_model(model: nn.Module, parallel: str, ctx: DistContext, param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The module the training step calls: ``model`` itself, a DDP wrapper, or ``model`` sharded in place.

    FSDP2: `fully_shard` on every ``GenTronBlock`` (the model's ``_no_split_modules``) and then on the
    root, with `MixedPrecisionPolicy(param_dtype, reduce_dtype=float32)`; parameters become DTensors.
    """
    if parallel == "none" or not ctx.enabled:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # A depthwise conv's weight (C, 1, k, k) gets its CPU gradient with a different stride on the size-1 axis
        # than DDP's bucket view: the same memory layout, so the warning DDP prints on the first step is noise.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"train.parallel must be one of {PARALLEL_MODES}, got {parallel!r}")


def is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (an alias: in-place ops write through), or the tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (all-gathers a DTensor; collective: every rank must call it)."""
    return t.full_tensor() if is_dtensor(t) else t


@torch.no_grad()
def clip_grad_norm(params: list[nn.Parameter], max_norm: float, ctx: DistContext, sharded: bool) -> torch.Tensor:
    """Global L2 norm of all gradients, then scale them to at most ``max_norm``; returns the norm (fp32).

    With sharded parameters (FSDP2) each rank holds a disjoint shard of every gradient, so the squared
    local norms are summed over ranks before the square root — the result equals the unsharded norm.
    Gradients that are replicated (DDP, trainable text encoders after `average_gradients`) are counted once.
    """
    sharded_grads = [local(p.grad) for p in params if p.grad is not None and is_dtensor(p.grad)]
    plain_grads = [p.grad for p in params if p.grad is not None and not is_dtensor(p.grad)]
    dev = ctx.device
    sq = torch.zeros((), device=dev, dtype=torch.float32)
    if sharded_grads:
        sq_sh = torch.stack([g.float().pow(2).sum() for g in sharded_grads]).sum().to(dev)
        if sharded and ctx.enabled:
            dist.all_reduce(sq_sh, op=dist.ReduceOp.SUM)
        sq = sq + sq_sh
    if plain_grads:
        sq = sq + torch.stack([g.float().pow(2).sum() for g in plain_grads]).sum().to(dev)
    norm = sq.sqrt()
    if max_norm > 0 and math_isfinite(norm):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        grads = sharded_grads + plain_grads
        if grads:
            torch._foreach_mul_(grads, coef.to(grads[0].device))
    return norm


def math_isfinite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t))


# ------------------------------------------------------------------------------------------------
# torch.distributed.checkpoint with a metadata reader that does not unpickle arbitrary objects
# ------------------------------------------------------------------------------------------------

_SAFE_MODULE_PREFIXES = ("torch.distributed.checkpoint",)
_SAFE_TORCH_NAMES = {"Size", "device", "layout", "memory_format", "strided", "contiguous_format", "preserve_format",
                     "channels_last"}
_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bytes", "bool", "slice",
                  "getattr", "object", "NoneType"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Only DCP metadata classes, torch sizes/dtypes and plain builtins; anything else is refused."""

    def find_class(self, module: str, name: str):
        if module.startswith(_SAFE_MODULE_PREFIXES):
            return super().find_class(module, name)
        if module == "torch" and (name in _SAFE_TORCH_NAMES or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        if module == "torch._utils" and name == "_rebuild_device_tensor_from_numpy":  # pragma: no cover
            raise pickle.UnpicklingError("tensors in DCP metadata are not allowed")
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module == "pathlib" and name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"):
            return super().find_class(module, name)
        if module == "torch.serialization" and name == "_get_layout":  # maps a layout name to torch.layout
            return super().find_class(module, name)
        if module == "collections" and name in ("OrderedDict", "defaultdict"):
            return super().find_class(module, name)
        if module == "copyreg" and name == "_reconstructor":
            return super().find_class(module, name)
        if module == "datetime" and name in ("datetime", "timedelta"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from checkpoint metadata")


def safe_load_metadata(path: Path):
    data = Path(path).read_bytes()
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _safe_reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            rank = kwargs.get("rank")
            metadata = safe_load_metadata(Path(self._get_metadata_path(rank)))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(path))


def dcp_save(state: dict[str, Any], path: Path) -> None:
    """Every rank writes its shards of ``state`` under ``path`` (a shared directory)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path), sync_files=True))


def dcp_load(state: dict[str, Any], path: Path) -> None:
    """Load ``path`` into ``state`` in place (resharding as needed); metadata via a restricted unpickler,
    tensors via DCP's ``weights_only`` reads."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, storage_reader=_safe_reader(Path(path)))
