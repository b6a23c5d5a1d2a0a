"""Export a fine-tuned tagger for serving: the LoRA adapter, and the model merged onto the 16-bit base.

    python export_model.py                                   # latest FineTuneVLM run that trained an adapter
    python export_model.py --run FineTuneVLM/1712345678 --out exports/model
    python export_model.py --base-model /models/qwen2.5-vl-3b   # the base, where it is not where it trained
    python export_model.py --no-merge                        # the adapter alone (vLLM --enable-lora)

Writes OUT/adapter (adapter, processor, photo_tagger.json with base model, pixel caps, prompt hash and
dataset run), OUT/<name> (merged model for transformers, `transformers serve` and vLLM), OUT/prompt.txt
and OUT/models.json (the openai-compatible entry for PromptModels), then prints the serve commands.
See docs/serving.md. The library code is phototagger/training/export.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from phototagger import mfclient  # first: it sets a user name and the datastore before Metaflow reads its configuration

from metaflow.exception import MetaflowNotFound
from phototagger.errors import UserError
from phototagger.mfclient import FINETUNE_FLOW

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    from phototagger.training.export import DEFAULT_PORT, DTYPES

    parser = argparse.ArgumentParser(prog="export_model.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", metavar="PATHSPEC", default="", help="FineTuneVLM run to export (FineTuneVLM/123 or 123); default: the latest of the branch that trained an adapter.")
    parser.add_argument("--out", metavar="DIR", type=Path, default=Path("exports/model"), help="Folder to write (default: %(default)s).")
    parser.add_argument("--base-model", metavar="PATH", default="", help="16-bit base model (hub id or folder); default: the one the adapter trained on.")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="Weights of the merged model (default: the base checkpoint's own, bf16 for Qwen2.5-VL-3B).")
    parser.add_argument("--no-merge", action="store_true", help="Write the adapter only.")
    parser.add_argument("--served-name", metavar="NAME", default="", help="Model name the server answers to, and the merged model's folder (default: <base>-lora-<run id>).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="Port in the printed commands and models.json (default: %(default)s).")
    parser.add_argument("--branch", metavar="NAME", help="@project branch whose runs to read (x for test.x, prod, user.<name>); default: user.<your Metaflow user>.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log what happens along the way.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        branch = mfclient.full_branch(args.branch)
        run, meta = mfclient.adapter_run(branch, args.run)
        if run is None:
            raise UserError(
                f"no FineTuneVLM run on branch {branch} has trained an adapter yet",
                f"run `{mfclient.flow_command(FINETUNE_FLOW, branch)}` first, or pass --run FineTuneVLM/<id>",
            )
        from phototagger.training import export

        print(f"Exporting the adapter of {run.pathspec} (base {meta['base_model']}, {meta.get('training', {}).get('global_step')} steps) to {args.out}")
        result = export.export_adapter(
            run.data.adapter_files, meta, run.pathspec, args.out, base_model=args.base_model, dtype=args.dtype,
            merge=not args.no_merge, served_name=args.served_name, base_url=f"http://127.0.0.1:{args.port}/v1",
        )
    except UserError as exc:
        print(f"export_model.py: {exc.one_line()}", file=sys.stderr)
        return 1
    except MetaflowNotFound:
        print(f"export_model.py: no run {args.run} in this datastore; pass --run FineTuneVLM/<id> of a run "
              f"`{mfclient.flow_command(FINETUNE_FLOW, mfclient.full_branch(args.branch))}` made", file=sys.stderr)
        return 1
    print(f"Adapter: {result.adapter_dir}")
    if result.merged_dir:
        print(f"Merged model ({result.meta['merged_dtype']}): {result.merged_dir}")
    print("Serve it with one of:")
    for line in export.serve_commands(result, args.port):
        print(f"  {line}")
    print(f"Score it beside the other models: add this entry to models.json ({result.out_dir / 'models.json'} holds it):")
    print(f"  {json.dumps(result.models_entry)}")
    if (HERE / "prompt.txt").is_file() and (HERE / "prompt.txt").read_text().strip() != result.meta["prompt_text"].strip():
        print(f"It was trained on another prompt than prompt.txt: run PromptModels with --config prompt {result.out_dir / 'prompt.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
