# Sourced by run_demo.sh and run_tests.sh: creates .venv from requirements.txt when it is missing or
# the requirements changed since it was built, then exports what every flow run needs offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "Setting up $VENV from requirements.txt (first time: a few minutes)..."
    PYTHON="${PYTHON:-python3}"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# Metaflow needs a user name other than root; CI and containers run as root with no USER set.
if [ -z "${METAFLOW_USER:-}" ]; then
    METAFLOW_USER="${USER:-$(id -un 2>/dev/null || true)}"
    [ -n "$METAFLOW_USER" ] && [ "$METAFLOW_USER" != root ] || METAFLOW_USER=photo-tagger
fi
export METAFLOW_USER
[ -n "${USER:-}" ] && [ "$USER" != root ] || export USER="$METAFLOW_USER"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
