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
"""The options of ``DropletSearch``: one table, from which everything else is derived.

Each field of :class:`DropletOptions` carries its default, its rule and its documentation. The
constructor's checks and its unknown-option message, ``DropletSearch.clone``, the signature and
the ``Parameters`` section of ``DropletSearch``'s docstring, and the Markdown table of
:func:`options_table` all come from it, so that a new option cannot be forgotten in one of them.
Pure Python: no TVM.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ._descent import DescentConfig

_OWNER = "DropletSearch"


@dataclass(frozen=True)
class IntRule:
    """An integer of at least ``minimum`` (``None`` too when ``allow_none``)."""

    minimum: int
    allow_none: bool = False

    def __str__(self) -> str:
        return f"an integer >= {self.minimum}" + (" or None" if self.allow_none else "")

    def accepts(self, value) -> bool:
        if value is None:
            return self.allow_none
        # bool is an int subclass; True as a trial count is a mistake, not 1.
        return (
            isinstance(value, (int, np.integer))
            and not isinstance(value, bool)
            and value >= self.minimum
        )


@dataclass(frozen=True)
class NumberRule:
    """A real number in an interval whose ends are open or closed."""

    low: float
    high: float
    low_open: bool
    high_open: bool

    def __str__(self) -> str:
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"a number in {left}{self.low}, {self.high}{right}"

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


@dataclass(frozen=True)
class BoolRule:
    """``True`` or ``False``, nothing merely truthy."""

    def __str__(self) -> str:
        return "True or False"

    def accepts(self, value) -> bool:
        return isinstance(value, bool)


def default_exploration_trials(max_trials: int, trials_per_iter: int | None = None) -> int:
    """The exploration budget used when ``exploration_trials`` is not given.

    Half of the task's budget (rounded up), at least 16 trials and at most 300 (the paper
    explored 300 samples of a 10,000 budget), rounded up to whole batches of ``trials_per_iter``
    when it is given, never more than ``max_trials``.

    Why half: at 128 trials (16 a batch) exploring 64 before descending gave 1.030x faster
    kernels than exploring 48 (30 %), faster in 12 of 19 paired runs of the CPU benchmark (not
    significant) at 1.09x the tuning time, and droplet's gap to evolutionary search at 4x the
    budget shrank as its exploration grew (``docs/benchmarks/budget-128.md``); at 64 trials,
    descending from 32 beat 32 more evolutionary trials (``descent-ab.md``).

    Why whole batches: each evolutionary batch is a whole generation, and a trailing partial
    one (3 trials at a budget of 64 and 16 a batch, with 30 %) spends a generation on a few
    candidates; in 14 evolutionary runs of the CPU benchmark the best after 32 trials was 1.20x
    faster (geometric mean) than after 19, the second batch being the first that the cost model
    guides.
    """
    explore = max(16, min(300, (max_trials + 1) // 2))
    if trials_per_iter:
        explore = -(-explore // trials_per_iter) * trials_per_iter
    return max(0, min(max_trials, explore))


def _option(default, rule, kind: str, doc: str, example, details: str = ""):
    """A field of :class:`DropletOptions`.

    ``doc`` is the one line of the options table; ``details`` follows it in the docstring.
    ``example`` is a valid value other than the default (tests clone with it).
    """
    meta = {"rule": rule, "type": kind, "doc": doc, "details": details, "example": example}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class DropletOptions:
    """The validated options of one ``DropletSearch`` (all but ``EvolutionarySearch``'s).

    Raises
    ------
    ValueError
        An option breaks its rule (the message names it, the rule, the value and the default),
        or ``max_measurements < min_measurements``.
    """

    exploration_trials: int | None = _option(
        None,
        IntRule(0, allow_none=True),
        "Optional[int]",
        "Trials given to evolutionary search, counted in the task's budget (``None``: half the "
        "budget, 16 to 300, whole batches; ``0``: descend from the database's best record).",
        example=8,
        details="``None``: see :func:`default_exploration_trials` (half the budget, between 16 "
        "and 300, rounded up to whole batches: 64 of 128 at 16 a batch). ``0`` starts the "
        "descent from the database's best record, or from the design space.",
    )
    p_value: float = _option(
        DescentConfig.p_value,
        NumberRule(0.0, 1.0, low_open=True, high_open=True),
        "float",
        "Significance level of the acceptance test (one-sided Welch t-test).",
        example=0.1,
    )
    min_gain: float = _option(
        DescentConfig.min_gain,
        NumberRule(0.0, 1.0, low_open=False, high_open=True),
        "float",
        "Smallest relative speed-up worth testing.",
        example=0.02,
    )
    max_step: int = _option(
        DescentConfig.max_step,
        IntRule(1),
        "int",
        "Largest step of the neighborhood (steps beyond 1 are the paper's speculation).",
        example=1,
    )
    min_measurements: int = _option(
        DescentConfig.min_measurements,
        IntRule(1),
        "int",
        "Measurements (runner calls) of both sides before a move can be accepted.",
        example=3,
    )
    max_measurements: int = _option(
        DescentConfig.max_measurements,
        IntRule(1),
        "int",
        "Most measurements of one schedule to decide a contested move (>= ``min_measurements``).",
        example=4,
    )
    sure_gain: float = _option(
        DescentConfig.sure_gain,
        NumberRule(0.0, 1.0, low_open=False, high_open=False),
        "float",
        "A gain so far above the noise between runner calls that one call on each side is "
        "enough (1.0: never).",
        example=0.2,
        details="The noise between calls is 3-9 % on the 2-core CPUs this was tuned on. Once "
        "three schedules were measured in two calls, the bound becomes three times the "
        "measured between-call noise (90th percentile) when that is lower, but never below "
        "``min_gain``: on a GPU, where calls agree within ~0.5 %, a 2 % gain then moves after "
        "one call.",
    )
    descent_batch: int | None = _option(
        8,
        IntRule(1, allow_none=True),
        "Optional[int]",
        "Most candidates in one descent batch (``None``: the tuner's ``num_trials_per_iter``).",
        example=None,
        details="The descent decides a move once per batch, so at most one move per batch: at "
        "a budget of 64 trials and 16 a batch it had three batches, and made two moves in 45 "
        "trials on a GPU matmul while 26 of those trials were faster than where it started. "
        "Smaller batches make more moves per trial; builds of a batch run in parallel, so very "
        "small ones leave build workers idle.",
    )
    max_restarts: int | None = _option(
        None,
        IntRule(0, allow_none=True),
        "Optional[int]",
        "How many times a finished descent may restart with more exploration while budget is "
        "left (``None``: until the budget is spent; ``0``: never).",
        example=2,
    )
    snap_locations: bool = _option(
        True,
        BoolRule(),
        "bool",
        "Keep a neighbor whose move made a compute location illegal, at the nearest legal "
        "location on the root side, instead of dropping it.",
        example=False,
        details="A tile move can remove the loop a block was computed at. MetaSchedule's replay "
        "then moves the block to the next outer legal loop (or the root), as it does for the "
        "mutants of evolutionary search; droplet used to drop such neighbors as repaired (2-4 % "
        "of the step-1 tile neighbors of C2D:0, CBR:0 and DEP:0 schedules). "
        "Any other repaired decision still drops the neighbor.",
    )
    rank_neighbors: bool = _option(
        False,
        BoolRule(),
        "bool",
        "Measure the step-1 neighbors best-predicted first by the tuner's cost model instead of "
        "in a random order.",
        example=True,
        details="It decides only which neighbors are measured first; moves are still accepted "
        "on measurements alone. Off by default: in two A/Bs of 21 runs on CPU it made no "
        "measurable difference (0.955x) and costs a replay of every step-1 neighbor per move "
        "(``docs/benchmarks/ab-rank.md``).",
    )
    remeasure_start: bool = _option(
        False,
        BoolRule(),
        "bool",
        "Measure the descent's starting schedule again and compare neighbors with that "
        "measurement only.",
        example=True,
        details="The start is the fastest of many measured schedules, so its recorded time is "
        "biased low (the winner's curse: 1.16x on the CPU kernels of "
        "``docs/benchmarks/descent-ab.md``), and against it neighbors with real gains smaller "
        "than the bias are rejected without a second look. It is measured in the first "
        "descent batch beside its first neighbors (if that fails, the recorded time is used). "
        "Costs one trial a descent. Off by default: in paired A/Bs of 36 descents from shared "
        "starts it made no measurable difference (1.03x on a 2-core CPU, 0.92x on a busy "
        "16-core one; 0.97x pooled).",
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            rule = spec.metadata["rule"]
            if not rule.accepts(value):
                raise ValueError(
                    f"{_OWNER}: {spec.name} must be {rule}, got {value!r}; {_fix(spec)}"
                )
        if self.max_measurements < self.min_measurements:
            raise ValueError(
                f"{_OWNER}: max_measurements must be >= min_measurements, got "
                f"max_measurements={self.max_measurements} < "
                f"min_measurements={self.min_measurements}; "
                "raise max_measurements or lower min_measurements"
            )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in table order."""
        return tuple(spec.name for spec in dataclasses.fields(cls))

    @classmethod
    def split(
        cls, options: Mapping[str, object], others: Iterable[str], others_owner: str
    ) -> tuple[DropletOptions, dict[str, object]]:
        """Separate ``options`` into validated droplet options and the ``others``' options.

        Parameters
        ----------
        options : Mapping[str, object]
            Keyword arguments as given to the constructor.
        others : Iterable[str]
            The names another component accepts (``EvolutionarySearch``'s options).
        others_owner : str
            That component's name, for the unknown-option message.

        Raises
        ------
        ValueError
            A droplet option breaks its rule.
        TypeError
            A name is neither a droplet option nor one of ``others``.
        """
        names, others = cls.names(), tuple(others)
        ours = cls(**{k: v for k, v in options.items() if k in names})
        rest = {k: v for k, v in options.items() if k not in names}
        unknown = sorted(set(rest) - set(others))
        if unknown:
            raise TypeError(
                f"{_OWNER}: unknown option(s) {unknown}; the options are "
                f"{', '.join(names)} and the {others_owner} options {list(others)}"
            )
        return ours, rest

    def as_dict(self) -> dict[str, object]:
        """Every option by name, as keyword arguments for the constructor."""
        return {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}

    def descent_config(self) -> DescentConfig:
        """The options the descent core reads, as its plain types (its defaults are theirs)."""
        return DescentConfig(
            **{
                spec.name: type(spec.default)(getattr(self, spec.name))
                for spec in dataclasses.fields(DescentConfig)
            }
        )


def _fix(spec: dataclasses.Field) -> str:
    """How to fix a bad option: its default."""
    return f"pass a valid value or leave it out (default {spec.name}={spec.default!r})"


def signature(extra: str) -> inspect.Signature:
    """``(self, *, <option>=<default>, ..., **extra)``: the constructor's signature for help()."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=spec.default)
        for spec in dataclasses.fields(DropletOptions)
    ]
    params.append(inspect.Parameter(extra, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params, return_annotation=None)


def with_options(cls: type) -> type:
    """Class decorator: derive the option-facing parts of ``cls`` from :class:`DropletOptions`.

    ``cls`` keeps its options in ``self.options`` (a :class:`DropletOptions`) and its
    constructor takes ``**options``. Added: a read-only property per option (``self.max_step``
    reads ``self.options.max_step``), the keyword-only signature that ``help()`` and IDEs show,
    and the ``Parameters`` entries in place of ``{parameters}`` in the docstring.
    """
    for name in DropletOptions.names():
        setattr(cls, name, property(_reader(name), doc=f"The ``{name}`` option (read-only)."))
    cls.__init__.__signature__ = signature("evolutionary_options")
    if cls.__doc__:
        cls.__doc__ = cls.__doc__.replace("    {parameters}", parameters_doc())
    return cls


def _reader(name: str):
    def read(self):
        return getattr(self.options, name)

    return read


def parameters_doc(indent: str = "    ") -> str:
    """The numpydoc ``Parameters`` entries of every option (for ``DropletSearch.__doc__``)."""
    lines = []
    for spec in dataclasses.fields(DropletOptions):
        meta = spec.metadata
        text = meta["doc"] + (" " + meta["details"] if meta["details"] else "")
        lines.append(f"{indent}{spec.name} : {meta['type']}")
        lines += [f"{indent}    {line}" for line in _wrap(text, 92 - len(indent))]
    return "\n".join(lines)


def options_table() -> str:
    """The options as a Markdown table: ``name | default | rule | meaning``, one row each.

    The meaning is each option's one-line doc; the reasons and evidence behind a default stay in
    the docstring of :class:`DropletSearch` and in ``docs/design.md``.
    """
    rows = ["| name | default | rule | meaning |", "| --- | --- | --- | --- |"]
    for spec in dataclasses.fields(DropletOptions):
        doc = _markdown(spec.metadata["doc"]).replace("|", "\\|")
        rows.append(f"| `{spec.name}` | `{spec.default!r}` | {spec.metadata['rule']} | {doc} |")
    return "\n".join(rows) + "\n"


def _markdown(text: str) -> str:
    """reStructuredText inline markup of the docs (roles, double backquotes) as Markdown."""
    import re  # pylint: disable=import-outside-toplevel

    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _wrap(text: str, width: int) -> list[str]:
    import textwrap  # pylint: disable=import-outside-toplevel

    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
