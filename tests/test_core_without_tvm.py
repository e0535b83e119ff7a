"""The search's core imports and runs in an interpreter where ``import tvm`` fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A fresh interpreter: TVM refused by a meta-path finder, then the core descends to the known
# optimum of a synthetic objective (every tile's innermost factor 4, the categorical 2).
_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class NoTVM(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tvm" or name.startswith("tvm.") or name.startswith("tvm_ffi"):
                raise ImportError(f"{name} is disabled for this test")
            return None

    sys.meta_path.insert(0, NoTVM())
    try:
        import tvm  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("tvm was importable")

    import numpy as np

    import ms_droplet
    from ms_droplet import _acceptance, _neighbors, _samples
    from ms_droplet._descent import (
        CATEGORICAL,
        PERFECT_TILE,
        Coordinate,
        DescentConfig,
        DescentCore,
    )
    from ms_droplet._options import DropletOptions, options_table

    assert _neighbors.tile_neighbors((4, 4), 1, -1)
    assert _samples.valid_run_secs([1e10]) == []
    assert _acceptance.compare_samples([1.0, 1.0], [0.5, 0.5], 0.05, 0.01).outcome.value == "accept"
    assert "max_step" in options_table()

    coords = [
        Coordinate(PERFECT_TILE, "tile#0"),
        Coordinate(PERFECT_TILE, "tile#1"),
        Coordinate(CATEGORICAL, "cat#2", choices=(0, 1, 2, 3)),
    ]

    def cost(vector):
        (_, a), (_, b), c = vector
        return 1.0 + abs(np.log2(a) - 2) + abs(np.log2(b) - 2) + 0.5 * abs(c - 2)

    config = DropletOptions(max_step=1).descent_config()
    core = DescentCore(((64, 1), (1, 64), 0), [], coords, config, np.random.default_rng(0))
    for _ in range(500):
        proposals = core.propose(4)
        if not proposals:
            core.conclude()
            if core.finished:
                break
            continue
        for proposal in proposals:
            core.observe(proposal.vector, [cost(proposal.vector)] * 3)
        core.conclude()
    assert core.finished, core.stop_reason
    assert core.incumbent == ((16, 4), (16, 4), 2), core.incumbent
    leaked = sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm."))
    assert not leaked, leaked
    assert "ms_droplet.strategy" not in sys.modules
    print("core ok without tvm")
    """
)


def test_core_imports_and_descends_without_tvm():
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "core ok without tvm" in result.stdout
