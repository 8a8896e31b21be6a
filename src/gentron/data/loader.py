"""Multi-worker prefetching for training loops whose batches are already decided per step.

The trainer draws each step's global indices from ``(seed, step)`` and gives every rank its slice, so a
batch's contents are a pure function of the step. :class:`StepBatchLoader` only adds parallel decoding
and prefetching on top of that: it turns ``indices_for_step`` into a ``batch_sampler`` for
:class:`torch.utils.data.DataLoader` and yields the items of each step, in step order.

Resuming needs no loader state: construct it with ``start_step`` = the step being resumed and the same
``indices_for_step``, and it yields exactly the batches the interrupted run would have seen next.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import DataLoader, Dataset, Sampler


def keep_list(items: list[Any]) -> list[Any]:
    """Collate function that leaves a batch as the list of dataset items (the caller stacks/encodes)."""
    return items


class _StepBatchSampler(Sampler[list[int]]):
    """Yields ``indices_for_step(step)`` for each step; runs in the main process, so closures are fine."""

    def __init__(self, indices_for_step: Callable[[int], Sequence[int]], start_step: int, end_step: int):
        self.indices_for_step = indices_for_step
        self.start_step, self.end_step = start_step, end_step

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.end_step):
            yield [int(i) for i in self.indices_for_step(step)]  # tensors and numpy ints welcome

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)


class StepBatchLoader:
    """Iterate ``(step, items)`` for ``step`` in ``range(start_step, end_step)``, where ``items`` is
    ``[dataset[i] for i in indices_for_step(step)]`` — loaded by ``num_workers`` worker processes with
    ``prefetch_factor`` batches in flight each (workers persist across iterations), or in the main
    process when ``num_workers`` is 0.

    Resume = construct with ``start_step`` set to the resumed step: positions are a pure function of the
    step, so nothing else needs saving. Items loaded in workers update the skip counters (``skipped``) of
    the workers' copies of the data set, not the main process's; augmentations drawn from torch's global
    generator (``random_flip``) are seeded per worker by torch, so they are not reproduced across
    ``num_workers`` settings — everything seeded by index (crops, skips) is.
    """

    def __init__(self, dataset: Dataset, indices_for_step: Callable[[int], Sequence[int]], start_step: int,
                 end_step: int, num_workers: int = 0, prefetch_factor: int = 2):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        if end_step < start_step:
            raise ValueError(f"end_step ({end_step}) is before start_step ({start_step})")
        self.dataset = dataset
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.num_workers = int(num_workers)
        self.sampler = _StepBatchSampler(indices_for_step, self.start_step, self.end_step)
        workers = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if num_workers > 0 else {}
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=self.num_workers,
                                 collate_fn=keep_list, **workers)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, list[Any]]]:
        # DataLoader returns batches in sampler order (in_order=True), so steps pair up one to one.
        return zip(range(self.start_step, self.end_step), self.loader)


__all__ = ["StepBatchLoader", "keep_list"]
