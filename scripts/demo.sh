#!/usr/bin/env bash
# Set up the environment (first run only) and run the mosaicvi demo.
# Extra arguments go to `mosaicvi demo`, e.g. `bash scripts/demo.sh --out /tmp/demo --epochs 20`.
set -euo pipefail
# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# results go to ./mosaicvi_demo in the current folder unless --out says otherwise
exec mosaicvi demo "$@"
