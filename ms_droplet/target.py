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
"""Targets: the host CPU by default, JSON from the command line."""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. ``"znver5"``), used as the target's ``mcpu``."""
    import tvm  # pylint: disable=import-outside-toplevel

    return str(tvm.get_global_func("target.llvm_get_system_cpu")())


def host_target(num_cores: int | None = None):
    """An llvm target for this machine: its CPU (``mcpu``) and its physical cores.

    Without ``mcpu`` LLVM emits generic x86-64 code (no AVX2/AVX-512), 4-5x slower kernels on
    this project's machines.
    """
    import psutil  # pylint: disable=import-outside-toplevel
    from tvm.target import Target  # pylint: disable=import-outside-toplevel

    cores = num_cores or psutil.cpu_count(logical=False) or 1
    return Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": int(cores)})


def as_target(target=None):
    """A ``Target`` from what the library functions accept: ``None`` (this machine's CPU, see
    :func:`host_target`), a ``Target``, a target string (``"llvm -mcpu=znver5"``) or a dict.

    Raises
    ------
    ValueError
        When TVM rejects the description; the message quotes it and says how to write one.
    """
    from tvm.target import Target  # pylint: disable=import-outside-toplevel

    if target is None:
        return host_target()
    if isinstance(target, Target):
        return target
    try:
        return Target(target)
    except Exception as err:  # noqa: BLE001 - TVM raises several error types for bad targets
        raise ValueError(
            f"target {target!r} was rejected by TVM: {err}; pass a Target, a string such as "
            f'"llvm -mcpu={host_cpu()}", a dict such as {{"kind": "llvm"}}, or None for this '
            "machine's CPU"
        ) from None


def parse_target(text: str | None):
    """A target from JSON text (``'{"kind": "llvm", "mcpu": "znver5"}'``); ``None``: the host.

    Raises
    ------
    ValueError
        When the text is not a JSON object or TVM rejects it; the message says how to write one.
    """
    from tvm.target import Target  # pylint: disable=import-outside-toplevel

    if text is None:
        return host_target()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--target must be a JSON object such as "
            f'\'{{"kind": "llvm", "mcpu": "{host_cpu()}", "num-cores": 2}}\', got {text!r} '
            f"({err.msg} at character {err.pos})"
        ) from None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(
            f'--target must be a JSON object with a "kind" key (e.g. {{"kind": "llvm"}}), '
            f"got {text!r}"
        )
    if spec["kind"] == "llvm" and "mcpu" not in spec:
        logger.warning(
            "target %s has no mcpu: LLVM will emit generic x86-64 code (4-5x slower here); "
            'add "mcpu": "%s" to describe this machine',
            text,
            host_cpu(),
        )
    try:
        return Target(spec)
    except Exception as err:  # noqa: BLE001 - TVM raises several error types for bad targets
        raise ValueError(f"--target {text!r} was rejected by TVM: {err}") from None
