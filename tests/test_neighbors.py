"""Exact neighbor sets of the pure rules (no TVM)."""

import math

import pytest

from ms_droplet._neighbors import (
    divisors_with_omega,
    index_neighbors,
    partitioned_tile_neighbors,
    prime_factors,
    tile_neighbors,
)


@pytest.mark.parametrize(
    "n, expected",
    [(1, ()), (7, (7,)), (12, (2, 2, 3)), (96, (2, 2, 2, 2, 2, 3)), (1000, (2, 2, 2, 5, 5, 5))],
)
def test_prime_factors(n, expected):
    assert prime_factors(n) == expected


def test_divisors_with_omega():
    assert divisors_with_omega(12, 1) == (2, 3)
    assert divisors_with_omega(12, 2) == (4, 6)
    assert divisors_with_omega(12, 3) == (12,)
    assert divisors_with_omega(12, 4) == ()
    assert divisors_with_omega(1000, 2) == (4, 10, 25)


def test_tile_neighbors_prime_extent():
    # 7 is prime: it can only travel between levels.
    assert tile_neighbors((7, 1), 1) == [(1, 7)]
    assert tile_neighbors((1, 7, 1), 1) == [(1, 1, 7), (7, 1, 1)]
    assert tile_neighbors((7, 1), 2) == []


def test_tile_neighbors_extent_12_exact():
    assert tile_neighbors((12, 1), 1) == [(4, 3), (6, 2)]
    assert tile_neighbors((12, 1), 2) == [(2, 6), (3, 4)]
    assert tile_neighbors((3, 4), 1) == [(1, 12), (6, 2)]
    assert tile_neighbors((2, 3, 2), 1) == [
        (1, 3, 4),
        (1, 6, 2),
        (2, 1, 6),
        (2, 6, 1),
        (4, 3, 1),
        (6, 1, 2),
    ]


def test_tile_neighbors_keep_product_and_innermost_limit():
    for tile in [(96, 1, 1, 1), (2, 3, 4, 4), (1000, 1), (5, 8, 25)]:
        extent = math.prod(tile)
        for step in (1, 2, 3):
            for limit in (-1, 4, 16):
                for nb in tile_neighbors(tile, step, limit):
                    assert math.prod(nb) == extent
                    assert nb != tile
                    assert limit < 1 or nb[-1] <= limit


def test_tile_neighbors_innermost_limit_exact():
    # (1, 16) has innermost 16 = the limit: nothing may grow it.
    assert tile_neighbors((2, 16), 1, max_innermost_factor=16) == [(4, 8)]
    assert tile_neighbors((2, 16), 1) == [(1, 32), (4, 8)]


def test_tile_neighbors_none_for_trivial_or_dynamic():
    assert tile_neighbors((1, 1, 1, 1), 1) == []
    assert tile_neighbors((-1, 4), 1) == []
    with pytest.raises(ValueError, match="step must be >= 1"):
        tile_neighbors((4, 1), 0)


def test_partitioned_tile_neighbors_keep_inner_multiple():
    # inner part = positions [1, 3) must keep a multiple of 4.
    got = partitioned_tile_neighbors((2, 2, 2), 1, partition_pos=1, innerpart_factor=4)
    assert got == [(1, 2, 4), (1, 4, 2), (2, 1, 4), (2, 4, 1)]
    for nb in got:
        assert math.prod(nb[1:]) % 4 == 0


def test_index_neighbors():
    assert index_neighbors(0, range(4), 1) == [1]
    assert index_neighbors(2, range(4), 1) == [1, 3]
    assert index_neighbors(2, range(4), 2) == [0]
    assert index_neighbors(3, range(4), 5) == []
    # Compute locations: sparse legal set, neighbors by position.
    assert index_neighbors(3, (-2, -1, 3, 6, 7, 9), 1) == [-1, 6]
    assert index_neighbors(-2, (-2,), 1) == []
    assert index_neighbors(5, (1, 2), 1) == []
