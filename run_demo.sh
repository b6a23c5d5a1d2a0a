#!/usr/bin/env bash
# The quick baseline loop, offline, on the built-in demo photos (18 photos, three batches of 6):
#   (UpdatePhotos -> PromptModels) x 3 -> EvaluationFlow
# Each batch is scored with the earlier ones as history, as hourly runs would; on the first batch the
# offline baselines (prior, knn) learn from that batch itself, each photo's tags guessed from the other
# photos only (leave-one-out). No key and no network are needed: models whose key is not exported are
# skipped with one line (--skip-unavailable). Every model runs with both prompts of prompts/demo.json.
# Each demo gets its own Metaflow project branch, so it never mixes with your own runs and can be
# run again. Set up on first use: .venv from requirements.txt.
#
#   ./run_demo.sh --finetune   also runs the fine-tune loop offline (PrepareVLMData -> FineTuneVLM ->
#                              PromptCustomModels) on a tiny Qwen2.5-VL with random weights built from
#                              config: it proves the code path on a CPU, its tags are gibberish.
set -euo pipefail
finetune=false
for arg in "$@"; do
    case "$arg" in
        --finetune) finetune=true ;;
        *) echo "usage: $0 [--finetune]" >&2; exit 2 ;;
    esac
done
caller="$(pwd)"
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
# The commands printed at the end work from where the demo was started: `cd` to the project first when that is elsewhere.
here="$(pwd)"
[ "$caller" = "$here" ] && go="" || go="cd $here && "

branch="demo$(date -u +%Y%m%d%H%M%S)"
flow() { python "$1" --branch "$branch" run "${@:2}"; }

echo "== Photo Tagger demo on project branch test.$branch"
for batch in 1 2 3; do
    echo "== Batch $batch"
    flow updatephotos.py --source demo --batch-size 6
    python promptmodels.py --branch "$branch" --config prompts prompts/demo.json run --skip-unavailable  # two prompts side by side
done
if $finetune; then
    echo "== Fine-tune loop on a tiny random Qwen2.5-VL (CPU smoke run)"
    [ -f models/tiny-qwen/config.json ] || python -m phototagger.training.random_qwen models/tiny-qwen --size tiny
    flow prepare_vlm_data.py
    flow finetune_vlm.py --base-model models/tiny-qwen --quantize none --max-steps 4 --batch-size 2 \
        --output-dir "finetune_checkpoints/$branch"
    # Random weights answer gibberish, so every answer fails to parse: let the error budget pass.
    flow promptcustommodels.py --max-error-share 1.0
fi
flow evalsflow.py --title "Photo Tagger demo"

run_id=$(python - "$branch" <<'PY'
import sys
from phototagger.mfclient import EVAL_FLOW, full_branch, latest_successful_run
print(latest_successful_run(EVAL_FLOW, full_branch(sys.argv[1])).id)
PY
)
python evalsflow.py card get "$run_id/end" dashboard.html >/dev/null
echo
echo "== Done. The dashboard card of EvaluationFlow/$run_id is in $here/dashboard.html"
echo "   Open it in a browser, or write it again with:"
echo "     ${go}.venv/bin/python evalsflow.py card get $run_id/end dashboard.html"
echo "   or browse every card with: ${go}.venv/bin/python evalsflow.py card server"
echo "   Export the best model's tags of this demo (drop --dry-run to write them):"
echo "     ${go}.venv/bin/python export_tags.py --branch $branch --dry-run"
