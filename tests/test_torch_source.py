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
"""``ms_droplet.relax.load_torch``: a PyTorch module through ``torch.export`` and TVM's frontend
(runs only where torch is installed; ms-droplet does not install it)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ms_droplet.relax import compile_untuned, load_torch, run_model  # noqa: E402
from ms_droplet.relax.sources import ModelInputError  # noqa: E402


class _Dense(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, x):
        return torch.relu(self.fc(x))


class _Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
            return x + 1
        return x - 1


def test_a_torch_module_converts_and_matches_torch():
    torch.manual_seed(0)
    module = _Dense()
    x = np.random.default_rng(0).standard_normal((2, 16)).astype("float32")
    model = load_torch(module, [x])
    assert model.entry == "main" and model.source == "torch" and model.name == "_Dense"
    assert [(s.shape, s.dtype) for s in model.inputs] == [((2, 16), "float32")]
    (out,) = run_model(compile_untuned(model.mod, "llvm"), model.entry, [x])
    expected = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_a_module_that_does_not_export_is_named():
    with pytest.raises(ModelInputError, match="load_torch: _Branchy did not export or convert"):
        load_torch(_Branchy(), [np.ones((2, 3), dtype="float32")])
