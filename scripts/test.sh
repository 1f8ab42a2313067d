#!/usr/bin/env bash
# The test command the README gives, and what CI runs (.ci/run calls this file).
# Installs flowserve with its dev extras into .venv (the first time pip compiles llama.cpp for
# llama-cpp-python: 5-10 min on 2 cores, silent; pip caches the wheel), installs the JS test
# client, makes sure PostgreSQL and Redis are up, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# flowrank, the package's one C file (src/flowserve/store/flowrank.c, keyword search's rank
# function), compiles against SQLite's headers; without them the install skips it, and the
# tests that check it is loaded fail.
if [ ! -f /usr/include/sqlite3ext.h ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libsqlite3-dev
fi
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "Installing flowserve; the first time this compiles llama.cpp (llama-cpp-python):" \
    "5-10 minutes on 2 cores with no output. pip caches the wheel for next time."
fi
.venv/bin/python -m pip install --quiet -e '.[dev]'

if command -v npm >/dev/null 2>&1 && [ ! -d tests/js/node_modules ]; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi

# The pages' tests (tests/browser) drive Debian's Chromium: when it is missing it is
# installed, so that they fail rather than skip without it.
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium
fi
# tests/test_nginx.py puts Debian's nginx in front of two servers (README, "Behind a load
# balancer"); it runs unprivileged in a temporary directory, the package's service unused.
if [ ! -x /usr/sbin/nginx ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq nginx
fi

# Local services for the scale-out tests (see README, "Many processes").
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if command -v redis-server >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy src

# In CI, also the soak test (bench/soak.py): a real server under good, malformed, oversized,
# wrong-key and disconnecting clients for 45 s; it fails on any 5xx or run left RUNNING.
# It runs first so that pytest's summary stays the last line of the log.
if [ "${CI:-}" = "true" ]; then
  .venv/bin/python bench/soak.py --seconds 45
fi

.venv/bin/python -m pytest "$@"
