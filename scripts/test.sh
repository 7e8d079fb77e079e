#!/usr/bin/env bash
# Install what is needed, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# two workers of one thread each (tests/conftest.py), each taking whole files: a tiny model's step is mostly
# Python, which one thread runs as fast as two (measured: 415 s on two workers, 581 s on one process). Debug one test
# with `bash scripts/test.sh -n 0 -k NAME`, or call pytest directly.
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
