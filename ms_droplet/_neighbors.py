# Licensed to the Apache Software Foundation (ASF) under one
# or more contributor license agreements.  See the NOTICE file
# distributed with this work for additional information
# regarding copyright ownership.  The ASF licenses this file
# to you under the Apache License, Version 2.0 (the
# "License"); you may not use this file except in compliance
# with the License.  You may obtain a copy of the License at
#
#   http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing,
# software distributed under the License is distributed on an
# "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY
# KIND, either express or implied.  See the License for the
# specific language governing permissions and limitations
# under the License.
"""Legal neighbors of one sampling decision.

Pure functions over ints and tuples: no TVM, no I/O, no randomness. A *step* of size ``k``
moves an index ``k`` places, or moves a divisor made of ``k`` prime factors (counted with
multiplicity) from one tile level to another. Every function returns its neighbors in a fixed,
sorted order so that callers decide the visiting order with their own seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

Tile = tuple[int, ...]


@lru_cache(maxsize=4096)
def prime_factors(n: int) -> tuple[int, ...]:
    """The prime factors of ``n`` with multiplicity, ascending: ``12 -> (2, 2, 3)``."""
    if n < 1:
        raise ValueError(f"prime_factors: n must be a positive integer, got {n}")
    factors = []
    d = 2
    while d * d <= n:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1
    if n > 1:
        factors.append(n)
    return tuple(factors)


@lru_cache(maxsize=4096)
def divisors_with_omega(n: int, omega: int) -> tuple[int, ...]:
    """The divisors of ``n`` made of exactly ``omega`` prime factors, ascending."""
    primes = prime_factors(n)
    found: set[int] = set()

    def walk(start: int, left: int, product: int) -> None:
        if left == 0:
            found.add(product)
            return
        previous = None
        for i in range(start, len(primes)):
            if primes[i] == previous:
                continue  # the same multiset of primes was already walked from here
            previous = primes[i]
            walk(i + 1, left - 1, product * primes[i])

    if 0 < omega <= len(primes):
        walk(0, omega, 1)
    return tuple(sorted(found))


def tile_neighbors(
    tile: Sequence[int],
    step: int,
    max_innermost_factor: int = -1,
    is_legal: Callable[[Tile], bool] | None = None,
) -> list[Tile]:
    """Tilings reached by moving a divisor of ``step`` prime factors between two tile levels.

    The product of the factors (the loop extent) is kept by construction.

    Parameters
    ----------
    tile : Sequence[int]
        The current factors, outermost first. All must be positive.
    step : int
        How many prime factors (with multiplicity) the moved divisor has. At least 1.
    max_innermost_factor : int
        The largest innermost factor allowed; ``-1`` (or any value < 1) means no limit, as in
        ``SamplePerfectTile``.
    is_legal : Optional[Callable[[Tuple[int, ...]], bool]]
        An extra rule a neighbor must satisfy (used by partitioned tiles).

    Returns
    -------
    neighbors : List[Tuple[int, ...]]
        The distinct legal neighbors, sorted, never including ``tile`` itself.
    """
    current = tuple(int(x) for x in tile)
    if step < 1:
        raise ValueError(f"tile_neighbors: step must be >= 1, got {step}")
    if any(x < 1 for x in current):
        return []  # unknown (dynamic) extents carry -1 factors: nothing to move
    result: set[Tile] = set()
    for src, factor in enumerate(current):
        for d in divisors_with_omega(factor, step):
            for dst in range(len(current)):
                if dst == src:
                    continue
                moved = list(current)
                moved[src] //= d
                moved[dst] *= d
                candidate = tuple(moved)
                if 0 < max_innermost_factor < candidate[-1]:
                    continue
                if is_legal is not None and not is_legal(candidate):
                    continue
                result.add(candidate)
    result.discard(current)
    return sorted(result)


def partitioned_tile_neighbors(
    tile: Sequence[int], step: int, partition_pos: int, innerpart_factor: int
) -> list[Tile]:
    """Neighbors of a ``SamplePartitionedTile`` decision.

    As :func:`tile_neighbors`, keeping the rule
    of the sampler: the product of the factors at positions ``[partition_pos, n)`` is a
    multiple of ``innerpart_factor``.
    """

    def keeps_partition(candidate: Tile) -> bool:
        return math.prod(candidate[partition_pos:]) % innerpart_factor == 0

    return tile_neighbors(tile, step, is_legal=keeps_partition)


def index_neighbors(value: int, choices: Sequence[int], step: int) -> list[int]:
    """The choices ``step`` places before and after ``value`` in the ordered ``choices``.

    Used for categorical indices (``choices = range(n)``) and compute locations (the legal
    locations of the block, in loop order, ``-2`` inline and ``-1`` root first).
    """
    if step < 1:
        raise ValueError(f"index_neighbors: step must be >= 1, got {step}")
    ordered = list(choices)
    if value not in ordered:
        return []
    pos = ordered.index(value)
    return [ordered[i] for i in (pos - step, pos + step) if 0 <= i < len(ordered)]
