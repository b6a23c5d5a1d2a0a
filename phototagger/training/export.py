"""Export a FineTuneVLM adapter for serving: the adapter as trained, and a merged model.

The export folder holds:
- `adapter/`: the LoRA adapter with the processor it was trained with (pixel caps, chat template)
  and `photo_tagger.json` (base model, pixel caps, prompt and its hash, dataset and FineTuneVLM runs);
  vLLM serves it on the base with `--enable-lora`.
- `<served name>/`: the adapter folded into the 16-bit base (never the 4-bit one it may have trained on:
  merging into dequantised NF4 weights bakes their rounding error into every layer), saved with every
  processor, tokenizer, chat-template and generation file, so transformers, `transformers serve` and
  vLLM load it as any Qwen2.5-VL checkpoint.
- `prompt.txt` (the prompt it was trained with) and `models.json` (the `openai-compatible` entry that
  makes PromptModels score the served model with that prompt's pixel caps).
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from phototagger.errors import UserError
from phototagger.training import vlm

EXPORT_META = "photo_tagger.json"
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # also the merged model's folder name
DTYPES = ("auto", "bfloat16", "float16", "float32")
DEFAULT_PORT = 8000
DEFAULT_MAX_TOKENS = 128  # PromptCustomModels' --max-new-tokens: the served model answers at the same length


@dataclass
class ExportResult:
    """Where the export went and what to serve it as."""

    out_dir: Path
    adapter_dir: Path
    merged_dir: Optional[Path]
    served_name: str
    meta: dict
    models_entry: dict


def export_meta(meta: Mapping[str, Any], finetune_run: str, base_model: str, merged_dtype: Optional[str]) -> dict:
    """What the adapter was trained with, written beside it (the FineTuneVLM contract, without the loss curves)."""
    training = meta.get("training") or {}
    return {
        "finetune_run": finetune_run, "base_model": base_model, "trained_on_base": meta["base_model"],
        "quantize": meta.get("quantize"), "min_pixels": int(meta["min_pixels"]), "max_pixels": int(meta["max_pixels"]),
        "prompt_text": meta["prompt_text"], "prompt_hash": meta["prompt_hash"], "dataset_run": meta["dataset_run"],
        "lora": meta.get("lora"), "global_step": training.get("global_step"), "merged_dtype": merged_dtype,
    }


def models_entry(served_name: str, meta: Mapping[str, Any], base_url: str) -> dict:
    """The models.json entry for the served model: same pixel caps (the provider shrinks each photo with the
    loader training used and sends it inline) and the same answer length as PromptCustomModels."""
    return {
        "provider": "openai-compatible", "model": served_name, "base_url": base_url,
        "max_pixels": int(meta["max_pixels"]), "max_tokens": DEFAULT_MAX_TOKENS, "timeout_s": 120,
    }


def merge_dtype(base_model: str, dtype: str) -> str:
    """The dtype to merge in: the base checkpoint's own 16- or 32-bit dtype for "auto"; never a quantised one."""
    from transformers import AutoConfig

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not a choice", f"pass one of {', '.join(DTYPES)}")
    config = AutoConfig.from_pretrained(base_model)
    if getattr(config, "quantization_config", None):
        raise UserError(
            f"--base-model {base_model} is a quantised checkpoint: merging into it would keep its rounding error",
            "pass --base-model PATH to the 16-bit base (e.g. Qwen/Qwen2.5-VL-3B-Instruct)",
        )
    if dtype != "auto":
        return dtype
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    saved = str(saved).replace("torch.", "") if saved else "bfloat16"
    return saved if saved in DTYPES else "bfloat16"


def merge_adapter(base_model: str, adapter_dir: Path, merged_dir: Path, dtype: str) -> None:
    """Load the base unquantised in `dtype`, fold the adapter in (merge_and_unload) and save it with the
    processor saved next to the adapter (its pixel caps and chat template)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(base_model, dtype=getattr(torch, dtype), quantization_config=None)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    processor = vlm.load_processor(adapter_dir, *(vlm.saved_pixel_caps(adapter_dir) or (vlm.DEFAULT_MIN_PIXELS, vlm.DEFAULT_MAX_PIXELS)))
    tokenizer = processor.tokenizer
    merged.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(vlm.END_OF_TURN)
    if tokenizer.pad_token_id is not None:
        merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.config.use_cache = True
    merged.config.get_text_config().use_cache = True
    merged.save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
    # transformers 5 nests the image processor in processor_config.json; older readers (vLLM on transformers
    # 4.x, llama.cpp's GGUF converter) look for the stand-alone preprocessor_config.json the hub checkpoints have
    processor.image_processor.save_pretrained(merged_dir)


def export_adapter(
    files: Mapping[str, bytes],
    meta: Mapping[str, Any],
    finetune_run: str,
    out_dir: str | Path,
    *,
    base_model: str = "",
    dtype: str = "auto",
    merge: bool = True,
    served_name: str = "",
    base_url: str = f"http://127.0.0.1:{DEFAULT_PORT}/v1",
) -> ExportResult:
    """Write `adapter/`, `<served name>/` (the merged model, unless merge is False), `prompt.txt` and `models.json` under out_dir.

    `files` and `meta` are a FineTuneVLM run's `adapter_files` and `finetune_meta`; `base_model` overrides
    the base it trained on (e.g. a local copy); the merged model is served as `served_name`."""
    from phototagger.training.train import unpack_adapter  # torch and peft: imported when an export runs

    from phototagger.training import base_models

    base_name = base_model or meta["base_model"]  # a folder, a copy cached in the datastore, or a hub id
    base_models.check(base_name)
    base = base_models.local_path(base_name) if merge else base_name
    dtype = merge_dtype(base, dtype) if merge else None
    out = Path(out_dir)
    served_name = served_name or vlm.adapter_model_name(meta["base_model"], finetune_run.rsplit("/", 1)[-1])
    if not SERVED_NAME.match(served_name):
        raise UserError(f"--served-name {served_name!r} is not a plain name", "use letters, digits, '.', '_' and '-' only")
    adapter_dir, merged_dir = out / "adapter", out / served_name  # a server started in out_dir knows the model by this name
    for stale in (adapter_dir, merged_dir):  # a re-export replaces both forms, never mixes two runs' files
        shutil.rmtree(stale, ignore_errors=True)
    unpack_adapter(files, adapter_dir)
    info = export_meta(meta, finetune_run, base_name, dtype)
    (adapter_dir / EXPORT_META).write_text(json.dumps(info, indent=2) + "\n")
    if merge:
        merge_adapter(base, adapter_dir, merged_dir, dtype)
        (merged_dir / EXPORT_META).write_text(json.dumps(info, indent=2) + "\n")
    (out / "prompt.txt").write_text(meta["prompt_text"].strip() + "\n")
    entry = models_entry(served_name, meta, base_url)
    (out / "models.json").write_text(json.dumps({"models": [entry]}, indent=2) + "\n")
    return ExportResult(out, adapter_dir, merged_dir if merge else None, served_name, info, entry)


def serve_commands(result: ExportResult, port: int = DEFAULT_PORT) -> list[str]:
    """The commands that serve the export, as docs/serving.md explains them."""
    info, name = result.meta, result.served_name
    caps = json.dumps({"min_pixels": info["min_pixels"], "max_pixels": info["max_pixels"]})
    lines = []
    if result.merged_dir is not None:
        lines += [
            f"cd {result.out_dir.resolve()} && transformers serve {name} --host 127.0.0.1 --port {port}",
            f"vllm serve {result.merged_dir.resolve()} --served-model-name {name} --port {port} --mm-processor-kwargs '{caps}'",
        ]
    lines.append(
        f"vllm serve {info['base_model']} --enable-lora --max-lora-rank {max(16, int((info.get('lora') or {}).get('r') or 16))} "
        f"--lora-modules {name}={result.adapter_dir.resolve()} --port {port} --mm-processor-kwargs '{caps}'"
    )
    return lines


@contextlib.contextmanager
def transformers_server(export_dir: str | Path, served_name: str, port: int = 0, device: str = "cpu",
                        startup_s: float = 300.0) -> Iterator[str]:
    """`transformers serve` on 127.0.0.1 for the merged model in export_dir (known by `served_name`), as
    docs/serving.md starts it; yields the base URL (…/v1) once /health answers, and stops the server after."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    command = [str(Path(sys.executable).with_name("transformers")), "serve", served_name, "--host", "127.0.0.1",
               "--port", str(port), "--device", device]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(command, cwd=str(export_dir), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"transformers serve exited ({server.returncode}):\n{log.read().decode(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"transformers serve did not answer on port {port} within {startup_s:g}s") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
