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
"""The small library that the benchmark scripts of ``scripts/`` share.

The scripts run as ``python scripts/<name>.py``, so ``scripts/`` is ``sys.path[0]`` and
``import benchlib`` needs no path edit. Its parts:

- :mod:`benchlib.env`: the environment record every result file carries (commit, date, command
  line, target, machine, versions);
- :mod:`benchlib.kernels`: the ``te_workload`` kernels, their random inputs and references;
- :mod:`benchlib.runs`: one tuning run of one kernel for a strategy, budget and seed, in its own
  ``work_dir`` (by :func:`ms_droplet.kernel.tune_kernel`), with its best-so-far curve;
- :mod:`benchlib.remeasure`: the winners of several runs built, checked against a reference and
  timed side by side (interleaved rounds, one process), on a CPU or a GPU;
- :mod:`benchlib.records`: the records a ``work_dir`` kept, in the order they were measured;
- :mod:`benchlib.results`: result files (JSON with the environment record, Markdown, PNG);
- :mod:`benchlib.cli`: the ``--smoke`` flag of the scripts that CI runs.

The rule for a valid time and the default runner settings are the package's
(:mod:`ms_droplet.measure`). ``tests/test_benchlib.py`` tests the parts that tune nothing.
"""
