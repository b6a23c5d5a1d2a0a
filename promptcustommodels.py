"""PromptCustomModels: tag the newest batch of photos with the fine-tuned Qwen2.5-VL and score it.

    python promptcustommodels.py run                                  # latest FineTuneVLM adapter, latest batch
    python promptcustommodels.py run --finetune-run FineTuneVLM/12 --update-run UpdatePhotos/34
    python promptcustommodels.py run --base-model /models/qwen2.5-vl-3b   # base not where it was trained
    python promptcustommodels.py run --with kubernetes                # one GPU per shard of --shard-size photos
    python promptcustommodels.py --config prompts prompts/demo.json run --all-prompts   # also on other prompts

The results have the shape of PromptModels' (`models_eval`), so EvaluationFlow shows the
fine-tuned model next to the vendor models.
"""
from pathlib import Path, PurePosixPath

from metaflow import Config, FlowSpec, Parameter, current, project, resources, step, trigger_on_finish

from phototagger.prompting import fanout
from phototagger.prompting.batch import DEFAULT_MODEL_DEADLINE_S
from phototagger.prompting.budget import DEFAULT_MAX_ERROR_SHARE, ErrorBudget
from phototagger.prompting.configs import prompt_config
from phototagger.prompting.summary import run_summary_lines
from phototagger.prompting.variants import prompt_variants, trained_variants, variants_config
from phototagger.scoring.metrics import summarise
from phototagger.scoring.vocabulary import Vocabulary, parse_file
from phototagger.mfclient import resolve_run, runs_of, scored_update_run


@project(name="photo_tagger")
@trigger_on_finish(flow="FineTuneVLM")
class PromptCustomModels(FlowSpec):
    """Evaluate the fine-tuned model exactly like the vendor models.

    1) Read the newest adapter from the latest successful FineTuneVLM run of this branch that
       trained one (or --finetune-run), and the unseen photos of the latest UpdatePhotos run (or
       --update-run), leaving out any photo the adapter was trained on.
    2) One branch per shard of --shard-size photos (each with its GPU) and prompt: prompt every photo
       with the `finetuned` provider (base + adapter, batched greedy generation) and the prompt the
       model was trained with (and, with --all-prompts, every configured variant); score every answer.
    3) Join the shards in photo order: store `models_eval` (PromptModels' shape) and `summaries`.
    4) Print a three-line summary and fail if the error budget was broken.
    """

    prompt = Config("prompt", default="prompt.txt", parser=prompt_config, help="Plain-text prompt file (the `default` variant).")
    prompts = Config(
        "prompts", default_value={"variants": []}, parser=variants_config,
        help="JSON list of named prompts (as PromptModels'); used with --all-prompts.",
    )
    vocabulary = Config("vocabulary", default=str(Path(__file__).resolve().with_name("vocabulary.json")), parser=parse_file,
                        help="JSON vocabulary of the lenient matching rule: synonyms, stop_tags, parents (see vocabulary.json).")

    finetune_run = Parameter(
        "finetune-run", default="", help="FineTuneVLM run whose adapter to evaluate (pathspec or run id); default: the latest that trained one."
    )
    update_run = Parameter(
        "update-run", default="", help="UpdatePhotos run whose unseen photos to tag (pathspec or run id); default: the latest successful one."
    )
    base_model = Parameter("base-model", default="", help="Base model path or hub id; default: the one the adapter was trained on.")
    batch_size = Parameter("batch-size", default=8, type=int, help="Photos per generate call on the GPU.")
    max_new_tokens = Parameter("max-new-tokens", default=128, type=int, help="Longest answer, in tokens.")
    no_cache = Parameter(
        "no-cache", default=False, type=bool, is_flag=True, help="Generate every answer again instead of reusing cached answers of this adapter."
    )
    max_error_share = Parameter(
        "max-error-share", default=DEFAULT_MAX_ERROR_SHARE, type=float, help="Fail the run when the share of failed or unparseable answers is above this."
    )
    model_deadline_s = Parameter(
        "model-deadline-s", default=DEFAULT_MODEL_DEADLINE_S, type=float,
        help="Seconds the model gets for the whole batch; photos not answered by then are recorded as failed (class 'deadline').",
    )
    all_prompts = Parameter(
        "all-prompts", default=False, type=bool, is_flag=True,
        help="Also evaluate on every configured prompt variant, not only on the prompt the model was trained with.",
    )
    shard_size = Parameter("shard-size", default=fanout.DEFAULT_SHARD_SIZE, type=int, help="Photos per task (each task loads the model on its own GPU).")

    @step
    def start(self):
        """Find the adapter and the photo batch through the Metaflow client; photos that were training
        examples of the adapter's dataset are left out so the score measures unseen photos only. No
        adapter yet (every FineTuneVLM run had an empty dataset) ends the run cleanly."""
        update = scored_update_run(current.branch_name, self.update_run)
        update_data = update.data  # a client Run lists its artifacts anew on every `.data`
        self.update_run_pathspec = update.pathspec
        self.batch_id = str(update_data.batch_id)
        self.batch_date = update_data.batch_date
        self.photos, self.excluded_trained_ids, self.model_name = {}, [], ""
        finetune, self.finetune_meta = self._finetune_run()
        if finetune is None:
            print(f"Nothing to evaluate: no FineTuneVLM run on branch {current.branch_name} has trained an adapter yet "
                  "(run `python prepare_vlm_data.py run` on tagged photos, then `python finetune_vlm.py run`).")
            self.work = self._work()
            self.next(self.evaluate, foreach="work")
            return
        self.finetune_run_pathspec = finetune.pathspec
        dataset = resolve_run("PrepareVLMData", None, self.finetune_meta["dataset_run"])
        trained_on = {example.get("photo_id") for example in dataset.data.train_examples}
        unseen = dict(update_data.unseen)
        self.excluded_trained_ids = sorted(pid for pid in unseen if pid in trained_on)
        self.photos = {pid: photo for pid, photo in unseen.items() if pid not in trained_on}
        base = self.base_model or self.finetune_meta["base_model"]
        self.model_name = f"{PurePosixPath(base.rstrip('/')).name}-lora-{finetune.id}"
        if self.excluded_trained_ids:
            print(f"Leaving out {len(self.excluded_trained_ids)} photos the adapter was trained on.")
        if not self.photos:
            print(f"Nothing to do: {update.pathspec} has no photos the adapter has not seen.")
        else:
            print(f"Tagging {len(self.photos)} photos of batch {self.batch_id} ({self.batch_date}) "
                  f"with finetuned:{self.model_name} from {finetune.pathspec}.")
        self.work = self._work()
        self.next(self.evaluate, foreach="work")

    def _work(self):
        """The foreach items: the fine-tuned model x its prompts x shards of the photos."""
        configured = prompt_variants(self.prompt.text, self.prompts.to_dict())
        self.prompt_variants = trained_variants((self.finetune_meta or {}).get("prompt_text", ""), configured, self.all_prompts)
        return fanout.plan([{"provider": "finetuned", "model": self.model_name}], self.prompt_variants, len(self.photos), self.shard_size)

    def _finetune_run(self):
        """(run, its finetune_meta): the FineTuneVLM run named by --finetune-run, else the newest of this
        branch that trained an adapter; (None, None) when none has."""
        if self.finetune_run:
            run = resolve_run("FineTuneVLM", current.branch_name, self.finetune_run)
            meta = run.data.finetune_meta
            if not meta:
                raise RuntimeError(f"{run.pathspec} trained no adapter (its dataset was empty); pick another run")
            return run, dict(meta)
        for run in runs_of("FineTuneVLM", current.branch_name):
            meta = run.data.finetune_meta
            if meta:
                return run, dict(meta)
        return None, None

    @resources(gpu=1, memory=24000)
    @step
    def evaluate(self):
        """Unpack the adapter next to its processor, load base + adapter once, and prompt the shard's photos in
        batches through `batch.prompt_photos`, then score each answer."""
        self.item, self.results, self.skip_reason = self.input, [], None
        photos = fanout.shard_photos(self.photos, self.item)
        if photos:
            import tempfile

            from phototagger.prompting.batch import PromptSettings, prompt_photos
            from phototagger.prompting.cache import make_cache
            from phototagger.prompting.prompter import Prompter
            from phototagger.scoring.metrics import score_results
            from phototagger.training.train import unpack_adapter

            meta = self.finetune_meta
            finetune = resolve_run("FineTuneVLM", None, self.finetune_run_pathspec)
            with tempfile.TemporaryDirectory(prefix="adapter-") as adapter_dir:
                unpack_adapter(finetune.data.adapter_files, adapter_dir)
                prompter = Prompter(
                    "finetuned", self.model_name, base_model=self.base_model or meta["base_model"], adapter_path=adapter_dir,
                    quantize=meta["quantize"], min_pixels=meta["min_pixels"], max_pixels=meta["max_pixels"],
                    max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                )
                settings = PromptSettings(batch_size=self.batch_size, deadline_s=self.model_deadline_s)
                results = prompt_photos(prompter, photos, self.item["variant"]["text"], settings, cache=make_cache(not self.no_cache))
                self.results = score_results(photos, results, Vocabulary.from_dict(self.vocabulary.to_dict()))
        self.next(self.join)

    @step
    def join(self, inputs):
        """Join the shards in photo order into `models_eval` as PromptModels does, one row per prompt, and summarise each row."""
        self.merge_artifacts(inputs, exclude=["item", "results", "skip_reason"])
        results, self.skipped_models = fanout.join(
            ({"item": i.item, "results": i.results, "skip_reason": i.skip_reason} for i in inputs), list(self.photos)
        )
        self.models_eval = {"batch_id": self.batch_id, "batch_date": self.batch_date, "photos": self.photos, "results": results,
                            "prompts": {v["id"]: v["text"] for v in self.prompt_variants}}
        self.summaries = {k: summarise(rows) for k, rows in results.items()}
        self.next(self.end)

    @step
    def end(self):
        """Print the summary, and fail clearly past the error budget."""
        results = self.models_eval["results"]
        for line in run_summary_lines(self.models_eval, self.summaries, self.skipped_models):
            print(line)
        ErrorBudget(self.max_error_share).raise_if_broken(results)


if __name__ == "__main__":
    PromptCustomModels()
