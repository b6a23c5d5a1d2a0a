#!/usr/bin/env bash
# What docker/Dockerfile.cpu installs, checked without docker: syncs the "light" role of uv.lock from PyPI
# into a fresh venv (as the image does), then runs the four light flows there from their own code
# packages, unpacked outside the checkout, on the demo photos. Needs uv and PyPI (a few minutes).
#   bash scripts/check_light_env.sh [work dir]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(realpath -m "${1:-$(mktemp -d)}")"
mkdir -p "$WORK/image"
cp "$ROOT/pyproject.toml" "$ROOT/uv.lock" "$WORK/image/"
(cd "$WORK/image" && UV_PROJECT_ENVIRONMENT="$WORK/venv" uv sync --frozen --no-dev --no-default-groups --no-install-project)
LIGHT="$WORK/venv/bin"
if "$LIGHT/python" -c "import torch" 2>/dev/null; then echo "the light environment has torch" >&2; exit 1; fi
export METAFLOW_USER="${METAFLOW_USER:-photo-tagger}" USER="${USER:-photo-tagger}"
export METAFLOW_DATASTORE_SYSROOT_LOCAL="$WORK/datastore" METAFLOW_CARD_LOCALROOT="$WORK/cards" PHOTOTAGGER_CACHE_DIR="$WORK/cache"
for run in updatephotos updatephotos promptmodels prepare_vlm_data evalsflow; do
    pod="$WORK/pods/$run.$RANDOM"
    mkdir -p "$pod"
    (cd "$ROOT" && "$LIGHT/python" "$run.py" --quiet package save "$pod/job.tar" >/dev/null)
    (cd "$pod" && tar xzf job.tar && rm job.tar)
    args=(run)
    case "$run" in
        updatephotos) args+=(--source demo --batch-size 4) ;;
        promptmodels) args+=(--models prior,knn) ;;
    esac
    (cd "$pod" && PATH="$LIGHT:$PATH" PYTHONPATH="$pod/.mf_code" "$LIGHT/python" "$run.py" "${args[@]}" 2>&1 | tail -1)
done
echo "check_light_env: the light flows ran in the light environment, from their code packages ($WORK)"
