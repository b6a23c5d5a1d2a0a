"""PromptCustomModels: tag the newest batch of photos with the fine-tuned Qwen2.5-VL and score it.

    python promptcustommodels.py run                                  # latest FineTuneVLM adapter, latest batch
    python promptcustommodels.py run --finetune-run FineTuneVLM/12 --update-run UpdatePhotos/34
    python promptcustommodels.py run --base-model /models/qwen2.5-vl-3b   # base not where it was trained
                                      # (a local folder, a copy cached in the datastore, or a hub id)
    python promptcustommodels.py run --with kubernetes                # one GPU per shard of --shard-size photos
    python promptcustommodels.py --config prompts prompts/demo.json run --all-prompts   # also on other prompts

The results have the shape of PromptModels' (`models_eval`), so EvaluationFlow shows the
fine-tuned model next to the vendor models.
"""
from pathlib import Path

from phototagger import mfdeploy  # first: it sets Metaflow's Argo defaults before Metaflow reads them

from metaflow import Config, FlowSpec, Parameter, current, package_sources, project, resources, step, trigger_on_finish

from phototagger.prompting import fanout
from phototagger.prompting.batch import DEFAULT_MODEL_DEADLINE_S
from phototagger.prompting.budget import DEFAULT_MAX_ERROR_SHARE, ErrorBudget, raise_if_broken
from phototagger.prompting.configs import prompt_config
from phototagger.prompting.summary import run_summary_lines
from phototagger.prompting.variants import prompt_variants, trained_variants, variants_config
from phototagger.scoring.table import summarise
from phototagger.scoring.vocabulary import Vocabulary, parse_file
from phototagger import mfclient
from phototagger.mfclient import FINETUNE_FLOW, resolve_run
from phototagger.prompting.custom_batch import plan_custom_batch
from phototagger.training import base_models

HERE = Path(__file__).resolve().parent  # the default Config sits beside this file, wherever it is run from


@package_sources(mfdeploy.PACKAGE_DATA, suffixes=mfdeploy.DATA_SUFFIXES)  # the data files tasks read
@mfdeploy.dependencies_by_role
@project(name="photo_tagger")
@trigger_on_finish(flow=FINETUNE_FLOW)
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

    deploy_images = mfdeploy.images_config()

    prompt = Config("prompt", default=str(HERE / "prompt.txt"), parser=prompt_config, help="Plain-text prompt file (the `default` variant).")
    prompts = Config(
        "prompts", default_value={"variants": []}, parser=variants_config,
        help="JSON list of named prompts (as PromptModels'); used with --all-prompts.",
    )
    vocabulary = Config("vocabulary", default=str(HERE / "vocabulary.json"), parser=parse_file,
                        help="JSON vocabulary of the lenient matching rule: synonyms, stop_tags, parents (see vocabulary.json).")

    finetune_run = Parameter(
        "finetune-run", default="", help="FineTuneVLM run whose adapter to evaluate (pathspec or run id); default: the latest that trained one."
    )
    update_run = Parameter(
        "update-run", default="", help="UpdatePhotos run whose unseen photos to tag (pathspec or run id); default: the latest successful one."
    )
    base_model = Parameter("base-model", default="", help="Base model: local folder, copy cached in the datastore, or hub id; default: the one the adapter was trained on.")
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
        batch = plan_custom_batch(current.branch_name, self.update_run, self.finetune_run, self.base_model)
        self.update_run_pathspec, self.batch_id, self.batch_date = batch.update_run_pathspec, batch.batch_id, batch.batch_date
        self.photos, self.excluded_trained_ids, self.model_name = batch.photos, batch.excluded_trained_ids, batch.model_name
        self.finetune_run_pathspec, self.finetune_meta = batch.finetune_run_pathspec, batch.finetune_meta
        print(batch.message)
        if batch.photos:
            base_models.check(self.base_model or self.finetune_meta["base_model"])  # before any GPU is asked for
        configured = prompt_variants(self.prompt.text, self.prompts.to_dict())
        self.prompt_variants = trained_variants((self.finetune_meta or {}).get("prompt_text", ""), configured, self.all_prompts)
        self.work = fanout.plan([{"provider": "finetuned", "model": self.model_name}], self.prompt_variants, len(self.photos), self.shard_size)
        self.next(self.evaluate, foreach="work")

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
            finetune = resolve_run(FINETUNE_FLOW, None, self.finetune_run_pathspec)
            with tempfile.TemporaryDirectory(prefix="adapter-") as adapter_dir:
                unpack_adapter(finetune.data.adapter_files, adapter_dir)
                prompter = Prompter(
                    "finetuned", self.model_name, base_model=base_models.local_path(self.base_model or meta["base_model"]), adapter_path=adapter_dir,
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
        self.models_eval = fanout.models_eval(self.batch_id, self.batch_date, self.photos, results, self.prompt_variants)
        self.summaries = {k: summarise(rows) for k, rows in results.items()}
        self.budget_errors = ErrorBudget(self.max_error_share).check(results)  # stored before `end` may fail on it
        self.next(self.end)

    @step
    def end(self):
        """Print the summary, and fail clearly past the error budget."""
        for line in run_summary_lines(self.models_eval, self.summaries, self.skipped_models, failed=bool(self.budget_errors),
                                  branch=current.branch_name):
            print(line)
        raise_if_broken(self.budget_errors)


if __name__ == "__main__":
    mfclient.run_cli(PromptCustomModels)
