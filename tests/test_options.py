"""The options table: checks, clone, rendered table and docstring all come from DropletOptions."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from ms_droplet import DropletOptions, DropletSearch, options_table
from ms_droplet._state import RunHooks, RunState

FIELDS = dataclasses.fields(DropletOptions)


def _examples() -> dict[str, object]:
    """A valid value other than the default for every option, from the table itself."""
    return {spec.name: spec.metadata["example"] for spec in FIELDS}


def test_every_option_has_a_non_default_example_that_validates():
    for spec in FIELDS:
        assert spec.metadata["example"] != spec.default, spec.name
        assert spec.metadata["rule"].accepts(spec.metadata["example"]), spec.name
        assert spec.metadata["doc"] and "\n" not in spec.metadata["doc"], spec.name
    DropletOptions(**_examples())


def test_clone_copies_every_option():
    strategy = DropletSearch(**_examples(), population_size=64)
    # The Python clone() itself (strategy.clone() is TVM's, which returns the FFI object).
    twin = strategy._inst.clone()
    assert twin.options == strategy.options == DropletOptions(**_examples())
    for spec in FIELDS:
        assert getattr(twin, spec.name) == spec.metadata["example"], spec.name
    assert twin.evolutionary_options == {"population_size": 64}
    assert twin.config == strategy.config
    assert twin.reports is strategy.reports


def test_defaults_and_signature_come_from_the_table():
    strategy = DropletSearch()
    params = inspect.signature(DropletSearch.__init__).parameters
    for spec in FIELDS:
        assert getattr(strategy, spec.name) == spec.default
        assert params[spec.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[spec.name].default == spec.default
    assert strategy.exploration_trials is None and strategy.descent_batch == 8


def test_options_are_read_only_attributes():
    with pytest.raises(AttributeError):
        DropletSearch().max_step = 3


def test_rendered_table_lists_every_option():
    table = options_table()
    lines = table.splitlines()
    assert lines[0] == "| name | default | rule | meaning |"
    assert len(lines) == 2 + len(FIELDS)
    for spec, line in zip(FIELDS, lines[2:]):
        assert line.startswith(f"| `{spec.name}` | `{spec.default!r}` | {spec.metadata['rule']} |")


def test_readme_options_table_is_the_generated_one():
    """README.md's table is options_table() between its markers: regenerate it when it fails."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- options-table:start -->\n", "<!-- options-table:end -->"
    assert readme.count(start) == 1 and readme.count(end) == 1
    between = readme[readme.index(start) + len(start) : readme.index(end)]
    assert between == options_table(), (
        "README.md's options table is stale: replace it with the output of "
        "python -c \"import ms_droplet; print(ms_droplet.options_table(), end='')\""
    )


def test_docstring_documents_every_option():
    doc = DropletSearch.__doc__
    assert "{parameters}" not in doc
    for spec in FIELDS:
        assert f"    {spec.name} : {spec.metadata['type']}\n" in doc


def test_unknown_option_message_names_every_option():
    with pytest.raises(TypeError) as err:
        DropletSearch(pvalue=0.1)
    message = str(err.value)
    assert message.startswith("DropletSearch: unknown option(s) ['pvalue']; the options are ")
    for spec in FIELDS:
        assert spec.name in message


def test_phase_is_none_when_not_tuning():
    strategy = DropletSearch()
    assert strategy.phase is None
    assert getattr(strategy, "phase", "missing") is None


def test_a_restart_keeps_the_pool_and_resets_the_descent():
    state = RunState(16, 4, [], None)
    state.pool.add(1, [1.0, 1.1], trace="t1")
    state.pool.add(2, [])
    state.descent.started, state.descent.hash_of = True, {(0,): 1}
    state.counts.exploration, state.stop_reason, state.phase = 4, "local optimum", "descent"
    state.restart(4)
    assert state.pool.measured == {1: [1.0, 1.1]} and state.pool.failed == {2}
    assert state.pool.best == pytest.approx(1.05)
    assert not state.descent.started and state.descent.hash_of == {}
    assert (state.phase, state.stop_reason, state.counts.restarts) == ("exploration", None, 1)
    assert (state.exploration_budget, state.explored_before_restart) == (8, 4)


def test_default_hooks_do_nothing():
    hooks = RunHooks()
    token = hooks.acquire(object())
    assert token is None and not hooks.should_stop()
    hooks.release(token)
