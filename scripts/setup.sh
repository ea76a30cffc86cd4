#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for mlwf: the system binaries the stack uses, then a
# virtual environment in .venv with mlwf and the pipeline runtime (scripts/demo.sh).
#   --test   also what only the test suite needs (scripts/test.sh): Chromium and its driver
#            (browser tests), docker-compose (compose-file tests) and the test libraries.
# Safe to run again: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

tests=0
case "${1:-}" in
  --test) tests=1 ;;
  "") ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v redis-server >/dev/null || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need_apt+=(postgresql)
if [ "$tests" = 1 ]; then
  command -v docker-compose >/dev/null || need_apt+=(docker-compose)
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)  # also where chromium came without it
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing system packages (install them with your package manager): ${need_apt[*]}" >&2
  fi
fi

command -v uv >/dev/null || python3 -m pip install -q uv
[ -x .venv/bin/python ] || uv venv -q .venv --python 3.11
extras=pipeline
[ "$tests" = 1 ] && extras=pipeline,test
uv pip install -q --python .venv/bin/python -c requirements/constraints.txt -e ".[$extras]"
# Bytecode for every installed module, as pip writes it: uv does not by default, and where
# Python may not write it (PYTHONDONTWRITEBYTECODE, a read-only install) every process
# would compile Airflow, pandas and scikit-learn again (7.7 s against 3.1 s to import them).
# The project's own packages too (installed editable, so outside site-packages): ~50 ms of
# each `mlwf` command's CPU otherwise. Also fills in what an earlier run of this script left
# out; quick when all is compiled.
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" mlflowctl src >/dev/null
echo "setup: ready (.venv/bin/mlwf)"
