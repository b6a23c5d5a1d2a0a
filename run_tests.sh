#!/usr/bin/env bash
# Sets up .venv (first time: a few minutes) and runs the whole test suite offline on the CPU:
# unit and integration tests under tests/, then the end-to-end flow runs in test_pipeline.py.
# Extra arguments go to pytest, e.g. ./run_tests.sh -k sources
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
# The dashboard browser check needs Debian's chromium; exiftool cross-checks the XMP sidecars.
bash scripts/install_browser.sh || echo "run_tests.sh: no chromium; the browser check will be skipped" >&2
command -v exiftool >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq --no-install-recommends libimage-exiftool-perl >/dev/null 2>&1; } || echo "run_tests.sh: no exiftool; the XMP cross-check and the keyword-reading tests will be skipped" >&2
targets=(tests)
[ -f test_pipeline.py ] && targets+=(test_pipeline.py)
set +e
python -m pytest "${targets[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "run_tests.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
