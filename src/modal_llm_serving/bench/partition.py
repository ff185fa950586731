"""How one load level splits into parts: worker processes, and containers on Modal.

A part is named by a path of splits, outermost first: `((k, n),)` is part k of n; a container's
part split again over its worker processes is `((k, n), (w, m))`. Every part of a load takes:

- its share of the streams: concurrency (closed loop) or the in-flight cap (open loop),
  as even as whole numbers allow;
- its share of the request budget (`--num-requests`): in proportion to its streams in a closed
  loop, so every part finishes at about the same time; equal shares in an open loop;
- its own request indices: a contiguous block of the budget (or, with no budget, every n-th
  number), so records merged from all parts never collide;
- in an open loop, every n-th arrival of the one schedule, so the union of the parts' send times
  is exactly the schedule a single process would have followed.

Nothing here talks to a process or a socket: the arithmetic is tested on its own.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

__all__ = ["Part", "resolve", "shares"]


def shares(total: int, n: int, *, weights: list[int] | None = None) -> list[int]:
    """`total` split into n whole shares that sum to it: equal (the first ones one larger when it
    does not divide), or in proportion to `weights` (largest remainders get the leftovers)."""
    if weights is None:
        return [total // n + (1 if k < total % n else 0) for k in range(n)]
    weight_sum = sum(weights)
    exact = [total * weight / weight_sum for weight in weights]
    result = [int(value) for value in exact]
    leftover = total - sum(result)
    by_remainder = sorted(range(n), key=lambda k: (result[k] - exact[k], k))
    for k in by_remainder[:leftover]:
        result[k] += 1
    return result


@dataclasses.dataclass(frozen=True)
class Part:
    """What one part of a load runs."""

    concurrency: int | None  # closed loop: this part's streams
    max_concurrency: int | None  # open loop: this part's cap on requests in flight
    budget: int | None  # requests this part may send (None: bounded by time only)
    first_index: int  # its request indices: first_index, first_index + index_step, ...
    index_step: int
    position_start: int  # open loop: its arrivals are schedule[position_start::position_step]
    position_step: int

    def indices(self) -> Iterator[int]:
        """This part's request indices, in order; finite when it has a budget."""
        numbers = itertools.count(self.first_index, self.index_step)
        return numbers if self.budget is None else itertools.islice(numbers, self.budget)

    def positions(self, schedule: Iterator[float]) -> Iterator[tuple[int, float]]:
        """This part's (position, send offset) pairs of the whole load's arrival schedule."""
        return itertools.islice(enumerate(schedule), self.position_start, None,
                                self.position_step)


def resolve(*, path: tuple[tuple[int, int], ...], concurrency: int | None,
            max_concurrency: int | None, num_requests: int | None) -> Part:
    """The part at `path` of a load with these bounds (an empty path is the whole load)."""
    first_index, index_step, position_start, position_step = 0, 1, 0, 1
    budget = num_requests
    for k, n in path:
        if not 0 <= k < n:
            raise ValueError(f"part {k} of {n} does not exist")
        weights = None
        if concurrency is not None:
            streams = shares(concurrency, n)
            if min(streams) < 1:
                raise ValueError(f"{concurrency} streams cannot be split into {n} parts")
            weights, concurrency = streams, streams[k]
        if max_concurrency is not None:
            caps = shares(max_concurrency, n)
            if min(caps) < 1:
                raise ValueError(f"a cap of {max_concurrency} cannot be split into {n} parts")
            max_concurrency = caps[k]
        if budget is not None:
            budgets = shares(budget, n, weights=weights)
            first_index += sum(budgets[:k])  # a contiguous block (steps stay 1 with a budget)
            budget = budgets[k]
        else:
            first_index += k * index_step
            index_step *= n
        position_start += k * position_step
        position_step *= n
    return Part(concurrency=concurrency, max_concurrency=max_concurrency, budget=budget,
                first_index=first_index, index_step=index_step,
                position_start=position_start, position_step=position_step)
