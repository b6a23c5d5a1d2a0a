"""FineTuneVLM: train a LoRA adapter for Qwen2.5-VL (4-bit QLoRA by default) on the curated photo chats.

    python finetune_vlm.py run                                        # latest PrepareVLMData run, Qwen2.5-VL-3B
    python finetune_vlm.py run --base-model /models/qwen2.5-vl-3b     # a local copy of the base model
    python finetune_vlm.py run --epochs 1 --max-steps 20 --quantize none
    python finetune_vlm.py run --with kubernetes                      # the train step asks for one GPU

The base model (about 7.5 GB for Qwen/Qwen2.5-VL-3B-Instruct) loads from a local folder, else from the
datastore's copy of that name, else from the hub, after which the train step stores it in the datastore
so no later run downloads it again; cache it once where pods cannot reach the hub:
    python -m phototagger.training.base_models cache /models/qwen2.5-vl-3b --name Qwen/Qwen2.5-VL-3B-Instruct

Resume after a failure:
- the train step checkpoints every --save-steps optimizer steps into --output-dir (default
  finetune_checkpoints/<training id> under the working directory, a cache) and stores each checkpoint in
  the Metaflow datastore (local or S3, at FineTuneVLM/checkpoints/<training id>/train), where the training
  id is the run id of the run whose `start` began it; @retry, on this machine or a new pod,
  `python finetune_vlm.py resume`, and a resume of that resume continue from the newest complete one there;
- from a fresh run, pass --resume-from <a local checkpoint dir of an earlier run>.
"""
from phototagger import mfdeploy  # first: it sets Metaflow's Argo defaults before Metaflow reads them

from metaflow import FlowSpec, Parameter, card, current, package_sources, project, resources, retry, step, trigger_on_finish
from metaflow.cards import Markdown, Table, VegaChart

from phototagger import mfclient
from phototagger.errors import UserError
from phototagger.training import base_models, vlm
from phototagger.mfclient import CARD_TIMEOUT_S, DATASET_FLOW

CHECKPOINT_ROOT = "finetune_checkpoints"


@package_sources(mfdeploy.PACKAGE_DATA, suffixes=mfdeploy.DATA_SUFFIXES)  # the data files tasks read
@mfdeploy.dependencies_by_role
@project(name="photo_tagger")
@trigger_on_finish(flow=DATASET_FLOW)
class FineTuneVLM(FlowSpec):
    """Fine-tune Qwen2.5-VL to answer the tagging prompt with a photo's real tags.

    1) Read the train and validation examples, the prompt and the pixel caps from the latest
       successful PrepareVLMData run of this branch (or --dataset-run).
    2) Train a LoRA adapter on the language model (base loaded 4-bit NF4 unless --quantize none),
       loss on the assistant's answer only, evaluating on the validation split each epoch and
       resuming from the newest checkpoint in the datastore after a failure. Store the adapter with its
       processor as `adapter_files`, and `finetune_meta`; the card shows the loss curves.
    3) Print where the adapter is and what to run next. An empty dataset ends the run cleanly.
    """

    deploy_images = mfdeploy.images_config()

    dataset_run = Parameter(
        "dataset-run", default="", help="PrepareVLMData run to train on (pathspec or run id); default: the latest successful one of this branch."
    )
    base_model = Parameter("base-model", default=vlm.DEFAULT_BASE_MODEL, help="Local folder, name of a copy cached in the datastore, or hub id of the Qwen2.5-VL base model.")
    epochs = Parameter("epochs", default=3.0, type=float, help="Passes over the training examples (ignored when --max-steps > 0).")
    batch_size = Parameter("batch-size", default=4, type=int, help="Photos per device batch.")
    grad_accum = Parameter("grad-accum", default=2, type=int, help="Batches per optimizer step (effective batch = batch-size x grad-accum).")
    learning_rate = Parameter("learning-rate", default=2e-4, type=float, help="Peak learning rate of the LoRA weights (cosine schedule, 3% warm-up).")
    lora_rank = Parameter("lora-rank", default=16, type=int, help="LoRA rank r.")
    lora_alpha = Parameter("lora-alpha", default=32, type=int, help="LoRA alpha (scaling = alpha / r).")
    lora_dropout = Parameter("lora-dropout", default=0.05, type=float, help="Dropout on the LoRA path.")
    quantize = Parameter("quantize", default="4bit", help="4bit (QLoRA: NF4, double quantisation) or none (full-precision base).")
    max_steps = Parameter("max-steps", default=-1, type=int, help="Stop after this many optimizer steps; -1 trains for --epochs.")
    save_steps = Parameter("save-steps", default=50, type=int, help="Checkpoint every this many optimizer steps (and at the end).")
    output_dir = Parameter(
        "output-dir", default="", help=f"Local checkpoint directory (a cache of the datastore's); default {CHECKPOINT_ROOT}/<run id> under the working directory."
    )
    resume_from = Parameter("resume-from", default="", help="Checkpoint directory of an earlier run to continue from (its last checkpoint).")

    @step
    def start(self):
        """Find the PrepareVLMData run through the Metaflow client and take its examples, prompt and pixel
        caps; check the settings and that the base model can be loaded early, before a GPU is requested."""
        if self.quantize not in ("4bit", "none"):
            raise UserError(f"--quantize {self.quantize!r} is not a choice", "pass --quantize 4bit or --quantize none")
        base_models.check(self.base_model)
        self.training_id = current.run_id  # a resume clones `start`, so resumes of resumes share it and its checkpoints
        run = mfclient.required_run(DATASET_FLOW, current.branch_name, self.dataset_run, "--dataset-run")
        data = run.data  # each attribute read loads the artifact again: read each once
        self.train_examples = list(data.train_examples)
        self.validation_examples = list(data.validation_examples)
        self.dataset = {
            "pathspec": run.pathspec, "prompt_text": data.prompt_text, "prompt_hash": data.prompt_hash,
            "train_examples": len(self.train_examples), "validation_examples": len(self.validation_examples),
        }
        self.min_pixels, self.max_pixels, self.seed = data.min_pixels, data.max_pixels, data.seed
        if not self.train_examples:
            print(f"Nothing to train: {run.pathspec} has no training examples. Ingest photos with tags "
                  "(python updatephotos.py run) and rebuild the dataset (python prepare_vlm_data.py run).")
        else:
            print(f"Training on {len(self.train_examples)} examples ({len(self.validation_examples)} for validation) "
                  f"from {run.pathspec}; {vlm.pixel_caps_note(self.min_pixels, self.max_pixels)}.")
        self.next(self.train)

    @card(type="blank", timeout=CARD_TIMEOUT_S)
    @retry(times=1)  # a lost pod resumes from the datastore's checkpoint; start already stopped what a retry cannot fix (a base model that will not load)
    @resources(gpu=1, memory=32000)
    @step
    def train(self):
        """Train the LoRA adapter with the transformers Trainer (phototagger.training.train), resuming from the
        newest checkpoint its training stored in the datastore (an earlier attempt's, or the resumed run's, on any machine), and store the
        adapter (never merged into the base) with its processor as `adapter_files`, the metadata as `finetune_meta`, and the loss curves on the card."""
        self.adapter_files, self.finetune_meta = {}, None
        if not self.train_examples:
            current.card.append(Markdown("# FineTuneVLM\nNo training examples: nothing was trained."))
            self.next(self.end)
            return
        from phototagger.training import checkpoint_store, train

        config = train.FineTuneConfig(
            epochs=self.epochs, batch_size=self.batch_size, grad_accum=self.grad_accum, learning_rate=self.learning_rate,
            lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, quantize=self.quantize,
            max_steps=self.max_steps, min_pixels=self.min_pixels, max_pixels=self.max_pixels, seed=self.seed,
            save_steps=self.save_steps,
        )
        output_dir = self.resume_from or self.output_dir or f"{CHECKPOINT_ROOT}/{self.training_id}"
        store = checkpoint_store.for_step(current.flow_name, self.training_id, current.step_name, output_dir,
                                          keep=config.save_total_limit)
        result = train.train_adapter(self.train_examples, self.validation_examples, base_models.local_path(self.base_model),
                                     output_dir, config, store=store)
        self.checkpoint_dir, self.checkpoint_uri = str(output_dir), store.uri
        self.adapter_files = train.pack_adapter(result.adapter_dir)
        self.finetune_meta = train.finetune_meta(result, config, self.base_model, self.dataset)
        current.card.append(Markdown(
            f"# FineTuneVLM {current.run_id}\n{self.base_model} ({self.quantize}) + LoRA r={self.lora_rank}, "
            f"{result.global_step} steps on {self.dataset['train_examples']} photos of {self.dataset['pathspec']}; "
            f"{vlm.pixel_caps_note(self.min_pixels, self.max_pixels)}."
        ))
        current.card.append(VegaChart(train.loss_chart_spec(result.train_loss, result.eval_loss)))
        current.card.append(Table(
            [[name, str(value)] for name, value in self.finetune_meta["training"].items()], headers=["setting", "value"]
        ))
        self.next(self.end)

    @step
    def end(self):
        """Print the outcome: final losses and where the adapter is, or why nothing was trained."""
        if not self.finetune_meta:
            print("No adapter this run (empty dataset).")
            return
        meta = self.finetune_meta
        last_train = meta["train_loss"][-1]["loss"] if meta["train_loss"] else float("nan")
        last_eval = f"{meta['eval_loss'][-1]['loss']:.3f}" if meta["eval_loss"] else "n/a (no validation split)"
        size_mb = sum(len(b) for b in self.adapter_files.values()) / 1e6
        print(f"Adapter of {meta['base_model']} trained for {meta['training']['global_step']} steps: "
              f"train loss {last_train:.3f}, validation loss {last_eval}.")
        print(f"Stored as adapter_files ({size_mb:.1f} MB) in {current.pathspec}; checkpoints in {self.checkpoint_uri} "
              f"(cached in {self.checkpoint_dir}).")
        print(f"Next: {mfclient.flow_command(mfclient.CUSTOM_PROMPT_FLOW, current.branch_name)}")


if __name__ == "__main__":
    mfclient.run_cli(FineTuneVLM)
