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
"""Measuring over TVM's RPC tracker: a real tracker and real servers on 127.0.0.1.

The tuning tests run droplet through ``ms_droplet.rpc.rpc_runner`` and check the JSON database:
every trial lands, and when a server dies (its whole process group killed mid-session) or
freezes (SIGSTOP), exactly the candidate it held is recorded as failed and the rest of the run
goes to the other server.
"""

import datetime
import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RunnerInput
from tvm.s_tir.meta_schedule.testing.te_workload import create_te_workload

from ms_droplet import DropletSearch, FastBuilder
from ms_droplet.measure import valid_run_secs
from ms_droplet.rpc import (
    RPCTrackerError,
    TrackerAddress,
    check_tracker,
    parse_tracker,
    query_tracker,
    rpc_runner,
    tracker_status,
)
from ms_droplet.runner import (
    _REMOTE,
    InterleavedRPCRunner,
    batch_inputs,
    remote_call_once,
    remote_time_in_rounds,
)
from ms_droplet.testing import local_rpc_cluster

FAILED = 1e9  # MetaSchedule records a failed candidate with run_secs [1e10]
# One timing call of a candidate takes >= 5 x 100 ms after the server loads its module, so a
# session lasts long enough to be caught in the middle of its measurement.
SLOW_EVALUATOR = dict(number=1, repeat=5, min_repeat_ms=100, enable_cpu_cache_flush=False)
# A session is caught mid-measurement only this soon after its module was loaded: later, the
# result may already be on its way back while the server has not yet logged the session's end.
CATCH_WITHIN_SEC = 0.25
FAST = EvaluatorConfig(number=2, repeat=3, min_repeat_ms=0, enable_cpu_cache_flush=False)


@pytest.fixture(scope="module")
def cluster():
    """A tracker and two servers shared by the tests that leave them running."""
    with local_rpc_cluster(2, key="ms-droplet-test") as running:
        yield running


@pytest.fixture
def fresh_cluster():
    """A tracker and two servers for one test that kills or freezes one of them."""
    with local_rpc_cluster(2, key="ms-droplet-test") as running:
        yield running


def _records(work_dir):
    path = os.path.join(work_dir, "database_tuning_record.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _sessions(server):
    """(modules loaded, sessions finished, sessions connected) in a server's log."""
    with open(server.log_path, encoding="utf-8") as f:
        text = f.read()
    return text.count("load_module"), text.count("finish serving"), text.count("connected from")


def _log_time(stamp):
    return datetime.datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def _measuring_since(server):
    """Wall-clock time the server loaded the module of the session it is in, else None."""
    loaded = None
    with open(server.log_path, encoding="utf-8") as f:
        for line in f:
            stamp, _, text = line.partition(" INFO ")
            if text.startswith("load_module"):
                loaded = _log_time(stamp)
            elif text.startswith("finish serving"):
                loaded = None
    return loaded


def _session_intervals(server):
    """(start, end) wall-clock times of the sessions in a server's log."""
    intervals, start = [], None
    with open(server.log_path, encoding="utf-8") as f:
        for line in f:
            stamp, _, text = line.partition(" INFO ")
            if not text:
                continue
            when = _log_time(stamp)
            if text.startswith("connected from"):
                start = when
            elif text.startswith("finish serving") and start is not None:
                intervals.append((start, when))
                start = None
    return intervals


@derived_object
class CollectResults(ms.measure_callback.PyMeasureCallback):
    """Keeps (wall time, runner error or None) of every measured candidate."""

    def __init__(self):
        self.results = []

    def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
        for built, ran in zip(builder_results, runner_results):
            assert built.error_msg is None, built.error_msg
            self.results.append((time.monotonic(), ran.error_msg))


def _tune(work_dir, target, runner, trials, *, per_iter, exploration, seed=3):
    collect = CollectResults()
    strategy = DropletSearch(exploration_trials=exploration, population_size=32)
    with FastBuilder() as builder:
        database = ms.tune_tir(
            create_te_workload("GMM", 0),
            target,
            work_dir,
            max_trials_global=trials,
            num_trials_per_iter=per_iter,
            strategy=strategy,
            builder=builder,
            runner=runner,
            measure_callbacks=[collect, *ms.measure_callback.MeasureCallback.create("default")],
            seed=seed,
        )
    (report,) = strategy.reports
    return database, report, collect.results


# ------------------------------------------------------------------ addresses and checks
@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:9190", TrackerAddress("127.0.0.1", 9190)),
        (" tracker.lab:1 ", TrackerAddress("tracker.lab", 1)),
        ("[::1]:65535", TrackerAddress("::1", 65535)),
    ],
)
def test_parse_tracker(text, expected):
    address = parse_tracker(text)
    assert address == expected
    assert parse_tracker(str(address)) == address


@pytest.mark.parametrize(
    "text",
    ["", "127.0.0.1", ":9190", "host:", "host:0", "host:65536", "host:port", "a b:1", "::1:9"],
)
def test_parse_tracker_names_option_rule_value_and_fix(text):
    with pytest.raises(ValueError) as info:
        parse_tracker(text)
    message = str(info.value)
    assert message.startswith("--rpc-tracker must be HOST:PORT")
    assert "port from 1 to 65535" in message
    assert f"got {text!r}" in message
    assert "e.g. --rpc-tracker 127.0.0.1:9190" in message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(key=""), r"--rpc-key \(key\) must be a non-empty key without spaces, .* got ''; e"),
        (dict(key="my board"), r"--rpc-key \(key\) .* got 'my board'"),
        (dict(session_timeout_sec=0), r"--rpc-session-timeout \(session_timeout_sec\) must be a "),
        (dict(session_timeout_sec=float("inf")), r"seconds > 0, got inf; give e\.g\. 30"),
        (dict(max_workers=0), r"--rpc-parallel \(max_workers\) must be an integer >= 1, got 0;"),
        (dict(candidate_timeout_sec=-1), r"candidate_timeout_sec must be .* got -1"),
        (
            dict(session_timeout_sec=20, candidate_timeout_sec=10),
            r"candidate_timeout_sec must be a number of seconds > session_timeout_sec \(20\), "
            "got 10",
        ),
    ],
)
def test_rpc_runner_rejects_bad_arguments(kwargs, match):
    arguments = dict(key="k", check=False) | kwargs
    key = arguments.pop("key")
    with pytest.raises(ValueError, match=match):
        rpc_runner("127.0.0.1:9190", key, **arguments)


def test_unreachable_tracker_fails_fast():
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RPCTrackerError) as info:
        rpc_runner(f"127.0.0.1:{port}", "k")
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert f"cannot reach the RPC tracker at 127.0.0.1:{port} within 5 s" in message
    assert f"python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port {port}" in message


def test_silent_or_foreign_listener_is_not_a_tracker():
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        with pytest.raises(RPCTrackerError, match=r"within 0\.5 s \(no answer\)"):
            query_tracker(silent.getsockname(), timeout_sec=0.5)
        assert time.monotonic() - start < 2
    with socket.socket() as foreign:  # answers, but not with the tracker's handshake
        foreign.bind(("127.0.0.1", 0))
        foreign.listen(1)

        def answer():
            conn, _ = foreign.accept()
            with conn:
                conn.recv(4)
                conn.sendall(b"HTTP/1.1 400\r\n\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        with pytest.raises(RPCTrackerError, match=r"answered, but not as a TVM RPC tracker"):
            query_tracker(foreign.getsockname(), timeout_sec=5)
        thread.join()


def test_tracker_status_and_missing_key(cluster):
    status = tracker_status(cluster.tracker, cluster.key)
    assert (status.connected, status.free, status.pending) == (2, 2, 0)
    assert status.keys == {cluster.key: 2}
    # The same summary as TVM's own client returns.
    summary = tvm.rpc.connect_tracker(cluster.host, cluster.port).summary()
    assert len(summary["server_info"]) == 2
    assert summary["queue_info"][cluster.key] == {"free": 2, "pending": 0}
    with pytest.raises(RPCTrackerError) as info:
        check_tracker(cluster.tracker, "other-board")
    message = str(info.value)
    assert "has 0 server(s) of key 'other-board', 1 needed" in message
    assert f"keys it has: '{cluster.key}' (2)" in message
    assert f"python -m tvm.exec.rpc_server --tracker {cluster.tracker} --key other-board" in message


# ------------------------------------------------------------------ tuning through the tracker
@pytest.mark.tuning
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "rpcrunner"])
def test_droplet_tunes_through_tracker_on_both_servers(cluster, tmp_path, host_target, interleaved):
    work_dir = str(tmp_path / "work")
    runner = rpc_runner(
        cluster.tracker, cluster.key, session_timeout_sec=20, interleaved=interleaved
    )
    assert isinstance(runner, InterleavedRPCRunner) == interleaved
    before = [_sessions(server) for server in cluster.servers]
    _, report, results = _tune(work_dir, host_target, runner, 16, per_iter=8, exploration=8)
    records = _records(work_dir)
    assert len(records) == len(results) == report.trials == 16
    assert report.exploration == 8 and report.descent == 8
    assert all(error is None for _, error in results)
    assert all(max(r[1][1]) < FAILED for r in records)
    # Both servers served, each candidate uploaded once, and at the same time: the runner
    # opened one session per server (default max_workers) ...
    loaded = [_sessions(server)[0] - b[0] for server, b in zip(cluster.servers, before)]
    assert sum(loaded) == 16 and min(loaded) >= 1, loaded
    first, second = (_session_intervals(server) for server in cluster.servers)
    overlaps = sum(1 for a in first for b in second if a[0] < b[1] and b[0] < a[1])
    if interleaved:
        # ... per batch (each server its share, timed in rounds), not per candidate.
        assert overlaps >= 1, (first, second)
        sessions = sum(_sessions(server)[2] - b[2] for server, b in zip(cluster.servers, before))
        assert 2 <= sessions < 16
    else:
        # ... per candidate.
        finished = [_sessions(server)[1] - b[1] for server, b in zip(cluster.servers, before)]
        assert sum(finished) == 16 and min(finished) >= 1, finished
        assert overlaps >= 4, (first, second)
    # The best record measured over RPC compiles and computes the product.
    mod = create_te_workload("GMM", 0)
    database = ms.database.JSONDatabase(work_dir=work_dir)
    sch = ms.tir_integration.compile_tir(database, mod, host_target)
    lib = tvm.compile(sch.mod, target=host_target)
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((1, 128, 128), dtype="float32") for _ in range(2))
    dev = tvm.cpu()
    z = tvm.runtime.tensor(np.zeros((1, 128, 128), dtype="float32"), dev)
    lib(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(y, dev), z)
    np.testing.assert_allclose(z.numpy(), x @ y, rtol=1e-4, atol=1e-4)


def _when_serving(server, work_dir, min_records, action):
    """A thread that runs ``action()`` once ``work_dir`` has ``min_records`` records and
    ``server`` is in the middle of measuring a candidate: its module was loaded less than
    ``CATCH_WITHIN_SEC`` ago, well inside the evaluator's >= 500 ms, and the session has not
    finished. (Catching a session merely not yet logged as finished is a race: the result may
    have reached the runner already, and the candidate then does not fail.)"""
    done = threading.Event()
    fired_at = []

    path = os.path.join(work_dir, "database_tuning_record.json")

    def committed() -> int:  # complete lines: the file may be written meanwhile
        if not os.path.exists(path):
            return 0
        with open(path, encoding="utf-8") as f:
            return f.read().count("\n")

    def watch():
        while not done.is_set():
            if committed() >= min_records:
                loaded = _measuring_since(server)
                if loaded is not None and time.time() - loaded < CATCH_WITHIN_SEC:
                    action()
                    fired_at.append(time.monotonic())
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return done, thread, fired_at


@pytest.mark.tuning
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "rpcrunner"])
def test_server_killed_mid_run_loses_at_most_its_candidate(
    fresh_cluster, tmp_path, host_target, interleaved
):
    cluster = fresh_cluster
    work_dir = str(tmp_path / "work")
    runner = rpc_runner(
        cluster.tracker,
        cluster.key,
        session_timeout_sec=20,
        evaluator_config=ms.runner.EvaluatorConfig(**SLOW_EVALUATOR),
        interleaved=interleaved,
    )
    victim, survivor = cluster.servers
    done, thread, killed_at = _when_serving(victim, work_dir, 4, victim.kill)
    try:
        _, report, results = _tune(work_dir, host_target, runner, 12, per_iter=4, exploration=8)
    finally:
        done.set()
        thread.join()
    assert killed_at, "the server was never caught in a session"
    assert not victim.alive() and not victim.group_alive()
    # Nothing lost: every trial is a record, the budget was spent.
    records = _records(work_dir)
    assert len(records) == len(results) == report.trials == 12
    errors = [(at, error) for at, error in results if error is not None]
    if interleaved:
        # Killed in a candidate's first call: that candidate fails, the rest of its share
        # goes on in a new session. Killed in the rounds: the share is measured again one
        # candidate per session on the survivor, and nothing fails.
        assert len(errors) <= 1, errors
        for _, error in errors:
            assert error.startswith("InterleavedRPCRunner: An exception occurred")
    else:
        # Exactly the candidate in the killed session failed, at once (no time-out).
        assert len(errors) == 1, errors
        assert errors[0][1].startswith("RPCRunner: An exception occurred")
    for failed_at, _ in errors:
        assert failed_at - killed_at[0] < 15
    # Each failure is recorded as failed while every other record is a valid measurement.
    assert sum(1 for r in records if max(r[1][1]) >= FAILED) == len(errors) == report.failures
    # The tracker dropped the dead server; the later candidates ran on the survivor.
    assert cluster.status().connected == 1
    after = [at for at, error in results if at > killed_at[0] and error is None]
    assert len(after) >= 4
    assert _sessions(survivor)[0] >= 12 - _sessions(victim)[0] - 1


def test_interleaved_rpc_runner_times_a_batch_per_server_in_rounds(cluster, built, tmp_path):
    before = [_sessions(server) for server in cluster.servers]
    runner = rpc_runner(cluster.tracker, cluster.key, evaluator_config=FAST)
    times = [valid_run_secs(f.result().run_secs) for f in runner.run(built)]
    assert [len(t) for t in times] == [3, 3, 3]
    assert min(times[1]) > max(times[0])  # 8x the work
    # Two sessions (one per server: shares of 2 and 1 candidates), each candidate uploaded once.
    deadline = time.monotonic() + 10
    while sum(_sessions(s)[1] - b[1] for s, b in zip(cluster.servers, before)) < 2:
        assert time.monotonic() < deadline, "the sessions did not end"
        time.sleep(0.1)
    after = [_sessions(server) for server in cluster.servers]
    assert sorted(a[0] - b[0] for a, b in zip(after, before)) == [1, 2]
    assert [a[2] - b[2] for a, b in zip(after, before)] == [1, 1]
    # A candidate whose module does not load fails alone; its session goes on.
    broken = tmp_path / "not_a_library.tar"
    broken.write_bytes(b"not a tar file")
    inputs = [built[0], RunnerInput(str(broken), "cpu", built[0].args_info), built[2]]
    results = [f.result() for f in runner.run(inputs)]
    assert results[1].run_secs is None
    assert results[1].error_msg.startswith("InterleavedRPCRunner: An exception occurred")
    for result in (results[0], results[2]):
        assert result.error_msg is None and len(valid_run_secs(result.run_secs)) == 3
    # shutdown() stops its worker processes; a later batch starts them again.
    workers = [lane.worker for lane in runner.lanes if lane.worker is not None]
    assert workers
    runner.shutdown()
    assert all(w.proc.poll() is not None for w in workers)
    assert [len(valid_run_secs(f.result().run_secs)) for f in runner.run(built[:1])] == [3]


def test_remote_rounds_refuse_a_session_whose_server_died(built):
    # In this process: two candidates loaded and called in one session, then timed in rounds
    # without being uploaded again; the session ends with the rounds.
    with local_rpc_cluster(1, key="ms-droplet-test") as cluster:
        (server,) = cluster.servers
        config = ms.runner.RPCConfig(cluster.host, cluster.port, cluster.key, 1, 30)
        items = batch_inputs(built[:2])
        for item in items:
            assert remote_call_once(config, None, item) > 0
        results = remote_time_in_rounds(config, None, FAST, items, 30)
        assert [len(times) for times, _ in results] == [3, 3]
        assert _sessions(server)[0] == 2 and _sessions(server)[2] == 1
        assert not _REMOTE
        # Again, and the server dies before the rounds: its candidates' errors would be the
        # server's, so the rounds fail as a whole (the runner then measures them one by one).
        for item in items:
            remote_call_once(config, None, item)
        server.kill()
        with pytest.raises(RuntimeError, match="the RPC session ended during the rounds"):
            remote_time_in_rounds(config, None, FAST, items, 30)
        assert not _REMOTE


@pytest.mark.slow
@pytest.mark.tuning
@pytest.mark.timeout(300)  # without the runner's own limit, this run would never end
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "rpcrunner"])
def test_frozen_server_times_out_at_most_its_candidate(
    fresh_cluster, tmp_path, host_target, interleaved
):
    cluster = fresh_cluster
    # A server that stops without closing its connections (a hung board): the server-side
    # session timeout cannot fire, the runner's own limit ends the candidate.
    work_dir = str(tmp_path / "work")
    runner = rpc_runner(
        cluster.tracker,
        cluster.key,
        session_timeout_sec=5,
        candidate_timeout_sec=10,
        evaluator_config=ms.runner.EvaluatorConfig(**SLOW_EVALUATOR),
        interleaved=interleaved,
    )
    frozen = cluster.servers[0]
    done, thread, frozen_at = _when_serving(
        frozen, work_dir, 4, lambda: os.killpg(frozen.pid, signal.SIGSTOP)
    )
    try:
        _, report, results = _tune(work_dir, host_target, runner, 12, per_iter=4, exploration=8)
    finally:
        done.set()
        thread.join()
        os.killpg(frozen.pid, signal.SIGCONT)
    assert frozen_at
    records = _records(work_dir)
    assert len(records) == report.trials == 12
    errors = [(at, error) for at, error in results if error is not None]
    if interleaved:
        # Frozen in a candidate's first call: it times out, the rest of its share goes on in
        # a new session. Frozen in the rounds: the share's rounds time out and are measured
        # again one candidate per session on the other server; nothing fails.
        assert len(errors) <= 1, errors
        for _, error in errors:
            assert error.startswith("InterleavedRPCRunner: Timeout")
    else:
        assert len(errors) == 1, errors
        assert errors[0][1].startswith("RPCRunner: Timeout")
    for failed_at, _ in errors:
        assert 9 <= failed_at - frozen_at[0] < 40
    assert sum(1 for r in records if max(r[1][1]) >= FAILED) == len(errors)


@pytest.mark.slow
@pytest.mark.tuning
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "interleaved, name", [(True, "InterleavedRPCRunner"), (False, "RPCRunner")], ids=["i", "r"]
)
def test_no_server_left_fails_each_candidate_after_its_limit(
    tmp_path, host_target, interleaved, name
):
    # The tracker queues requests for a key with no server forever; the runner's limit ends
    # each candidate, and the run completes with every trial recorded as failed.
    with local_rpc_cluster(1, key="ms-droplet-test") as cluster:
        runner = rpc_runner(
            cluster.tracker,
            cluster.key,
            session_timeout_sec=2,
            candidate_timeout_sec=4,
            interleaved=interleaved,
        )
        cluster.servers[0].kill()
        work_dir = str(tmp_path / "work")
        start = time.monotonic()
        _, report, results = _tune(work_dir, host_target, runner, 4, per_iter=4, exploration=4)
        assert time.monotonic() - start < 120
        assert len(results) == report.trials == report.failures == 4
        assert all(error.startswith(f"{name}: Timeout") for _, error in results)
        records = _records(work_dir)
        assert len(records) == 4 and all(max(r[1][1]) >= FAILED for r in records)
        assert cluster.status().pending >= 1  # the abandoned requests are still queued


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rpc-key", "k"], "--rpc-key ('k') needs --rpc-tracker HOST:PORT"),
        (["--rpc-tracker", "127.0.0.1:9190"], "--rpc-tracker needs --rpc-key KEY"),
        (["--rpc-tracker", "nohost", "--rpc-key", "k"], "--rpc-tracker must be HOST:PORT"),
        (["--rpc-tracker", "127.0.0.1:1", "--rpc-key", "k"], "cannot reach the RPC tracker"),
        (["--rpc-parallel", "0"], "--rpc-parallel must be an integer >= 1, got '0'"),
    ],
)
def test_cli_rpc_arguments_are_checked(argv, message, tmp_path, capsys):
    from ms_droplet.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv + ["--trials", "2", "--work-dir", str(tmp_path / "w"), "--no-progress"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.tuning
def test_cli_tunes_through_the_tracker(cluster, tmp_path, capsys):
    from ms_droplet.cli import main

    work_dir = str(tmp_path / "work")
    argv = ["--workload", "GMM:0", "--trials", "8", "--num-trials-per-iter", "4"]
    argv += ["--exploration-trials", "4", "--work-dir", work_dir, "--no-progress"]
    argv += ["--rpc-tracker", f"{cluster.host}:{cluster.port}", "--rpc-key", cluster.key]
    before = sum(_sessions(server)[0] for server in cluster.servers)
    argv += ["--json", str(tmp_path / "result.json")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["trials"] == 8 and result["trials_per_phase"]["exploration"] == 4
    records = _records(work_dir)
    assert len(records) == 8
    assert all(max(r[1][1]) < 1e9 for r in records)
    # Every candidate was measured on the servers, none on this machine.
    assert sum(_sessions(server)[0] for server in cluster.servers) - before == 8
