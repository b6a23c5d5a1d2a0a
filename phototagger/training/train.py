"""QLoRA fine-tuning of Qwen2.5-VL on photo-tagging chats, with the transformers Trainer.

Reads top to bottom like TRL's sft_vlm.py: configuration, model and processor, the collator (the
one subtle rule: loss only on the assistant's answer), the dataset, the trainer, then saving the
adapter. The base model is never merged: the adapter ships alone and is applied at inference on
the same (4-bit) base, as it was trained.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from phototagger.training import vlm
from phototagger.training.checkpoint_store import PREFIX_CHECKPOINT_DIR, CheckpointStore
from phototagger.images import load_image
from phototagger.training.curate import example_image
from phototagger.http import ImageFetchError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips
# LoRA goes on the language model's linear layers only; the vision tower (qkv/proj under `visual`) stays frozen.
LM_LINEAR_LAYERS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


# ---------------------------------------------------------------- configuration
@dataclass
class FineTuneConfig:
    """The knobs FineTuneVLM exposes; `lora_config()` and `training_arguments()` turn them into the libraries' own."""

    epochs: float = 3.0
    batch_size: int = 4
    grad_accum: int = 2
    learning_rate: float = 2e-4
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    quantize: str = "4bit"  # "4bit" (NF4, double quant) or "none"
    max_steps: int = -1  # > 0 overrides epochs
    min_pixels: int = vlm.DEFAULT_MIN_PIXELS
    max_pixels: int = vlm.DEFAULT_MAX_PIXELS
    seed: int = 42
    save_steps: int = 50  # checkpoint every N optimizer steps (and at the end), for resume
    save_total_limit: int = 2
    gradient_checkpointing: bool = True
    warmup_ratio: float = 0.03

    def lora_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=LM_LINEAR_LAYERS,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def training_arguments(self, output_dir: Path, has_validation: bool) -> TrainingArguments:
        use_bf16 = vlm.compute_dtype() == torch.bfloat16
        return TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=self.epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.batch_size,
            gradient_accumulation_steps=self.grad_accum,
            learning_rate=self.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=self.warmup_ratio,
            activation_checkpointing=self.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False},
            bf16=use_bf16,
            eval_strategy="epoch" if has_validation else "no",
            prediction_loss_only=True,  # never gather logits (batch x tokens x 152k vocab) during eval
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            logging_steps=1,
            seed=self.seed,
            data_seed=self.seed,
            remove_unused_columns=False,  # the collator needs `messages` and `image`
            label_names=["labels"],
            dataloader_pin_memory=torch.cuda.is_available(),
            report_to="none",
            disable_tqdm=not sys.stderr.isatty(),  # in Metaflow logs and CI, one printed line per log instead of a bar
        )


@dataclass
class TrainResult:
    """What a fine-tuning run produced: where the adapter is and how the loss went."""

    adapter_dir: Path
    train_loss: list[dict] = field(default_factory=list)  # [{"step", "epoch", "loss"}]
    eval_loss: list[dict] = field(default_factory=list)
    global_step: int = 0
    resumed_from: str | None = None
    samples_per_second: float = 0.0
    runtime_s: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    skipped_images: list[str] = field(default_factory=list)  # photo ids whose image failed to load


# ---------------------------------------------------------------- model and processor
def load_model_for_training(base_model: str, config: FineTuneConfig) -> tuple[Any, Any]:
    """The base model (4-bit or not) wrapped with LoRA adapters on the language model, and its processor."""
    processor = vlm.load_processor(base_model, config.min_pixels, config.max_pixels)
    model = vlm.load_model(base_model, config.quantize)
    if config.quantize == "4bit":
        # freezes the base, upcasts norms; gradient checkpointing is switched on once, by TrainingArguments
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.config.get_text_config().use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    model = get_peft_model(model, config.lora_config())
    return model, processor


# ---------------------------------------------------------------- collator
def answer_only_labels(input_ids: torch.Tensor, header_ids: Sequence[int], end_id: int) -> torch.Tensor:
    """Labels that supervise only the assistant answer and its end-of-turn token.

    For each row: the tokens after the last "<|im_start|>assistant\\n" up to and including the next
    <|im_end|> keep their id; everything else (system and user turns, image pads, the header itself,
    the trailing newline, padding) becomes IGNORE_INDEX.
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    header = torch.tensor(list(header_ids), dtype=input_ids.dtype)
    n = len(header)
    for row, ids in enumerate(input_ids):
        windows = ids.unfold(0, n, 1)
        starts = (windows == header).all(dim=1).nonzero().flatten()
        if len(starts) == 0:
            raise ValueError("a training chat has no assistant turn; each example needs the assistant's tag JSON")
        answer_start = int(starts[-1]) + n
        ends = (ids[answer_start:] == end_id).nonzero().flatten()
        answer_end = answer_start + int(ends[0]) + 1 if len(ends) else len(ids)
        labels[row, answer_start:answer_end] = ids[answer_start:answer_end]
    return labels


def make_collate_fn(processor: Any):
    """A collator: chat template + images through the capped processor, then answer-only labels."""
    tokenizer = processor.tokenizer
    header_ids = tokenizer(vlm.ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]
    end_id = tokenizer.convert_tokens_to_ids(vlm.END_OF_TURN)

    def collate(items: list[dict]) -> dict:
        items = [item for item in items if item["image"] is not None]
        if not items:
            raise ImageFetchError("every image in a training batch failed to load; check the dataset's image URLs")
        batch = vlm.encode_chats(
            processor, [item["messages"] for item in items], [item["image"] for item in items],
            add_generation_prompt=False, padding_side="right",
        )
        # The rule: loss only on the answer JSON and its <|im_end|>; prompt, image and pad tokens get -100.
        batch["labels"] = answer_only_labels(batch["input_ids"], header_ids, end_id)
        return batch

    return collate


# ---------------------------------------------------------------- dataset
class PhotoChats(Dataset):
    """Training examples (DESIGN.md format) with their images, loaded once and kept shrunk in memory.

    An image that fails to load is logged, remembered in `skipped`, and left out of its batch
    rather than stopping a long run.
    """

    def __init__(self, examples: Sequence[dict], max_pixels: int):
        self.examples = list(examples)
        self.max_side = vlm.max_side_for(max_pixels)
        self._images: dict[int, Any] = {}
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        if index not in self._images:
            try:
                self._images[index] = load_image(example_image(example), self.max_side)
            except ImageFetchError as exc:
                logger.warning("skipping photo %s: %s", example.get("photo_id", index), exc)
                self.skipped.append(str(example.get("photo_id", index)))
                self._images[index] = None
        return {"messages": example["messages"], "image": self._images[index]}


# ---------------------------------------------------------------- trainer
class UploadCheckpoints(TrainerCallback):
    """Stores each checkpoint in the datastore once the Trainer has written it."""

    def __init__(self, store: CheckpointStore):
        self.store = store

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.store.save(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def train_adapter(
    train_examples: Sequence[dict],
    validation_examples: Sequence[dict],
    base_model: str,
    output_dir: str | Path,
    config: FineTuneConfig,
    callbacks: Sequence[TrainerCallback] = (),
    store: CheckpointStore | None = None,
) -> TrainResult:
    """Train a LoRA adapter; resumes from the newest checkpoint in `store` (each new one is stored there
    too), else from the last checkpoint in output_dir when there is one.

    The adapter and the processor (with its pixel caps and chat template) end up in output_dir/adapter.
    """
    if not train_examples:
        raise ValueError("no training examples: run PrepareVLMData on photos with tags first")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_model_for_training(base_model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable of %d parameters", trainable, total)

    train_data = PhotoChats(train_examples, config.max_pixels)
    eval_data = PhotoChats(validation_examples, config.max_pixels) if validation_examples else None
    trainer = Trainer(
        model=model,
        args=config.training_arguments(output_dir, has_validation=eval_data is not None),
        data_collator=make_collate_fn(processor),
        train_dataset=train_data,
        eval_dataset=eval_data,
        callbacks=[*callbacks, UploadCheckpoints(store)] if store else list(callbacks),
    )
    stored = store.latest() if store else None
    last_checkpoint = str(stored) if stored else get_last_checkpoint(str(output_dir))
    if last_checkpoint:
        logger.info("resuming from %s", last_checkpoint)
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=last_checkpoint)
    if eval_data is not None and not any("eval_loss" in e for e in trainer.state.log_history[-2:]):
        trainer.evaluate()

    # ---------------------------------------------------------------- save (adapter only, never merged)
    adapter_dir = output_dir / "adapter"
    model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)
    history = trainer.state.log_history
    return TrainResult(
        adapter_dir=adapter_dir,
        train_loss=[{"step": e["step"], "epoch": e.get("epoch"), "loss": e["loss"]} for e in history if "loss" in e],
        eval_loss=[{"step": e["step"], "epoch": e.get("epoch"), "loss": e["eval_loss"]} for e in history if "eval_loss" in e],
        global_step=trainer.state.global_step,
        resumed_from=last_checkpoint,
        samples_per_second=float(output.metrics.get("train_samples_per_second", 0.0)),
        runtime_s=time.monotonic() - started,
        trainable_params=int(trainable),
        total_params=int(total),
        skipped_images=sorted(set(train_data.skipped + (eval_data.skipped if eval_data else []))),
    )


def lora_summary(config: FineTuneConfig) -> dict:
    """The LoRA settings recorded in finetune_meta."""
    return {"r": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": LM_LINEAR_LAYERS}


def finetune_meta(result: TrainResult, config: FineTuneConfig, base_model: str, dataset: dict) -> dict:
    """What PromptCustomModels and the card need to know about a trained adapter (the FineTuneVLM contract).

    `dataset` holds the PrepareVLMData run's `prompt_text`, `prompt_hash`, `pathspec`, and example counts.
    """
    return {
        "base_model": base_model, "quantize": config.quantize,
        "min_pixels": config.min_pixels, "max_pixels": config.max_pixels,
        "prompt_hash": dataset["prompt_hash"], "prompt_text": dataset["prompt_text"], "dataset_run": dataset["pathspec"],
        "lora": lora_summary(config), "train_loss": result.train_loss, "eval_loss": result.eval_loss,
        "training": {**asdict(config), "global_step": result.global_step, "resumed_from": result.resumed_from,
                     "train_examples": dataset["train_examples"], "validation_examples": dataset["validation_examples"],
                     "samples_per_second": result.samples_per_second, "runtime_s": round(result.runtime_s, 1),
                     "trainable_params": result.trainable_params, "total_params": result.total_params,
                     "skipped_images": result.skipped_images},
    }


def loss_chart_spec(train_loss: Sequence[dict], eval_loss: Sequence[dict]) -> dict:
    """A Vega-Lite line chart of train and validation loss by optimizer step (for Metaflow's VegaChart)."""
    rows = [{"step": p["step"], "loss": p["loss"], "split": "train"} for p in train_loss]
    rows += [{"step": p["step"], "loss": p["loss"], "split": "validation"} for p in eval_loss]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Loss (answer tokens only)", "width": 560, "height": 260,
        "data": {"values": rows},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "step", "type": "quantitative", "title": "optimizer step"},
            "y": {"field": "loss", "type": "quantitative", "title": "cross-entropy", "scale": {"zero": False}},
            "color": {"field": "split", "type": "nominal", "title": None},
        },
    }


# ---------------------------------------------------------------- adapter as an artifact
def pack_adapter(adapter_dir: str | Path) -> dict[str, bytes]:
    """Every file under the adapter dir (adapter weights, adapter config, processor files) by relative path."""
    root = Path(adapter_dir)
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    if "adapter_config.json" not in files:
        raise ValueError(f"{root} holds no adapter_config.json; is it the adapter dir train_adapter wrote?")
    return files


def unpack_adapter(files: dict[str, bytes], target_dir: str | Path) -> Path:
    """Write packed adapter files back to a directory PeftModel.from_pretrained can read."""
    root = Path(target_dir)
    for name, data in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"refusing to unpack {name!r}: adapter file names must be relative paths")
        path = root.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root

