#!/usr/bin/env bash
# The whole test suite: lint, unit tests, then the privileged integration tests (real kernel,
# real etcd). pytest's exit 5 ("no tests collected") is an error here: a suite that runs nothing
# has not passed.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${FLOWSCOPE_VENV:-$PWD/.venv}
"$VENV/bin/ruff" check . || exit 1
"$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
rc=$?
[ $rc -eq 5 ] && echo "test: pytest collected no tests" >&2
exit $rc
