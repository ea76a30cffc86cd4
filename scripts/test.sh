#!/usr/bin/env bash
# Set up with what the tests need too (scripts/setup.sh --test) and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
