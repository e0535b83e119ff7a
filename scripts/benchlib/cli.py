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
"""Command-line pieces the scripts share."""

from __future__ import annotations


def parse_with_smoke(parser, argv, help, **smoke):
    """Add ``--smoke`` to ``parser``, parse ``argv``; with ``--smoke``, set ``smoke``'s values.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    argv : list of str or None
        None: ``sys.argv[1:]``.
    help : str
        ``--smoke``'s help (what the smoke run does, for CI).
    **smoke
        Attribute values of the smoke run (``kernels="GMM:0"``, ``trials=8``, ...).

    Returns
    -------
    argparse.Namespace
    """
    parser.add_argument("--smoke", action="store_true", help=help)
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args
