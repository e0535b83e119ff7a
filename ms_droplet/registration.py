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
"""Make the name ``"droplet"`` work wherever MetaSchedule takes a strategy name.

MetaSchedule resolves strategy names with ``SearchStrategy.create``, a fixed if-chain with no
registry. :func:`register` wraps it: ``"droplet"`` builds a :class:`ms_droplet.DropletSearch`,
every other name goes to the original. Module-level aliases of ``create`` bound at import time
are re-pointed too. It is cheap (no heavy import), idempotent, and runs from the
``tvm.backends`` entry point in every process that imports TVM, builder and runner workers
included.
"""

from __future__ import annotations

import sys

STRATEGY_NAME = "droplet"
_MARK = "__ms_droplet_wrapped__"


def _create_droplet(*args, **kwargs):
    from .strategy import DropletSearch  # pylint: disable=import-outside-toplevel

    if args:
        raise TypeError(
            "SearchStrategy.create('droplet', ...): DropletSearch takes keyword-only options, "
            f"got {len(args)} positional argument(s); pass them as name=value"
        )
    return DropletSearch(**kwargs)


def register() -> None:
    """Add ``"droplet"`` to ``SearchStrategy.create`` and mend TVM's logging set-up (idempotent).

    The mend (:mod:`ms_droplet.tvm_fixes`) keeps ``tune_tir`` / ``tune_relax`` from crashing
    when the ``tvm.s_tir.meta_schedule`` logger carries a handler MetaSchedule did not create.
    """
    from .tvm_fixes import apply as apply_tvm_fixes  # pylint: disable=import-outside-toplevel

    apply_tvm_fixes()
    from tvm.s_tir.meta_schedule.search_strategy import (  # pylint: disable=import-outside-toplevel
        search_strategy as ss_module,
    )

    cls = ss_module.SearchStrategy
    current = cls.__dict__["create"].__func__
    if getattr(current, _MARK, False):
        return
    original = current

    def create(kind="evolutionary", *args, **kwargs):
        if kind == STRATEGY_NAME:
            return _create_droplet(*args, **kwargs)
        return original(kind, *args, **kwargs)

    create.__doc__ = (original.__doc__ or "Create a search strategy.") + (
        '\n\n"droplet" (added by ms_droplet) creates ms_droplet.DropletSearch.'
    )
    create.__name__ = original.__name__
    create.__qualname__ = original.__qualname__
    setattr(create, _MARK, True)
    cls.create = staticmethod(create)
    # Re-point aliases such as `search_strategy.create` that were bound at import time.
    for name, module in list(sys.modules.items()):
        if not name.startswith("tvm.") or module is None:
            continue
        namespace = getattr(module, "__dict__", None)
        if not namespace:
            continue
        for attr, value in list(namespace.items()):
            if value is original:
                setattr(module, attr, cls.create)


def autoload() -> None:
    """Entry point of the ``tvm.backends`` group, run by ``import tvm``."""
    register()
