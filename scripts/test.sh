#!/usr/bin/env bash
# Set up the environment (first run only) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_cli.py -k demo`.
set -euo pipefail
# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$MOSAICVI_ROOT"
# Small machines: more BLAS/torch threads than cores makes training much slower, not faster.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export MPLBACKEND="${MPLBACKEND:-Agg}"
exec python -m pytest -q "$@"
