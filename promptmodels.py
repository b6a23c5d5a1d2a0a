"""PromptModels: tag the newest batch of photos with every configured model and score the answers.

    python promptmodels.py run                                       # all models of models.json
    python promptmodels.py run --models prior,knn                    # only some (keys or providers)
    python promptmodels.py --config model-list my_models.json run    # another model list
    python promptmodels.py --config prices my_prices.json run        # another price table
    python promptmodels.py --config prompts prompts/demo.json run    # several prompts side by side
    python promptmodels.py run --shard-size 100 --max-workers 8      # 100 photos per task, 8 tasks at once

prompt.txt, models.json and prices.json are Metaflow Configs: edit them or pass your own file.
prices.json holds list prices (USD per 1M tokens) published by OpenAI and Together AI in 2025;
they are editable, and a model missing from the table is shown without a cost.
"""
from collections import Counter

from phototagger import mfdeploy  # first: it sets Metaflow's Argo defaults before Metaflow reads them

from metaflow import Config, FlowSpec, Parameter, card, current, project, step, trigger_on_finish
from metaflow.cards import Markdown

from phototagger.prompting.batch import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ERROR_SHARE,
    DEFAULT_MODEL_DEADLINE_S,
    ErrorBudgetExceeded,
    ModelSkipped,
    budget_problems,
    make_prompter,
    prompt_config,
    prompt_photos,
    run_summary_lines,
    select_models,
)
from phototagger.prompting import fanout
from phototagger.prompting.cache import make_cache
from phototagger.prompting.variants import prompt_variants, variants_config
from phototagger.scoring.metrics import summarise
from phototagger.mfclient import CARD_TIMEOUT_S, scored_update_run


@mfdeploy.keys_in_steps("prompt_model")
@project(name="photo_tagger")
@trigger_on_finish(flow="UpdatePhotos")
class PromptModels(FlowSpec):
    """Tag a batch of photos with several vision-language models and score them against ground truth.

    1) Read the unseen batch (and the earlier photos, for the offline baselines) from the latest
       successful UpdatePhotos run of this branch, or the run given by --update-run.
    2) One branch per model in models.json x prompt variant x shard of --shard-size photos: prompt
       every photo (bounded adaptive concurrency, a share of the model's, response cache, retries),
       score and price; the results are what EvaluationFlow reads.
       A model that cannot run here (no API key; a baseline on the first batch) is skipped with one line.
    3) Join the shards in photo order: store `models_eval` (one row per model and prompt),
       `summaries` and `skipped_models`, and check the error budget.
    4) End: print a three-line summary; fail if a model broke the error budget.
    """

    prompt = Config("prompt", default="prompt.txt", parser=prompt_config, help="Plain-text prompt file.")
    prompts = Config(
        "prompts", default_value={"variants": []}, parser=variants_config,
        help='JSON list of named prompts to run side by side, e.g. prompts/demo.json; default: prompt.txt alone, as "default".',
    )
    model_list = Config("model-list", default="models.json", help="JSON list of models to prompt (see models.json).")
    prices = Config("prices", default="prices.json", help="JSON price table, USD per 1M tokens (see prices.json).")
    deploy_secrets = mfdeploy.secrets_config()

    update_run = Parameter(
        "update-run", default="", help="UpdatePhotos run to read (pathspec or run id); default: the latest successful one of this branch."
    )
    concurrency = Parameter(
        "concurrency", default=DEFAULT_CONCURRENCY, type=int, help="Most calls in flight per model (a model's own 'concurrency' in models.json wins)."
    )
    no_cache = Parameter("no-cache", default=False, type=bool, is_flag=True, help="Call every model again instead of reusing cached answers.")
    max_error_share = Parameter(
        "max-error-share", default=DEFAULT_MAX_ERROR_SHARE, type=float, help="Fail the run when a model's share of failed calls is above this."
    )
    model_deadline_s = Parameter(
        "model-deadline-s", default=DEFAULT_MODEL_DEADLINE_S, type=float,
        help="Seconds a model gets for the whole batch; photos not answered by then are recorded as failed (class 'deadline').",
    )
    only_models = Parameter("models", default="", help="Comma-separated model keys or providers to run (e.g. prior,knn); default: all.")
    shard_size = Parameter(
        "shard-size", default=fanout.DEFAULT_SHARD_SIZE, type=int,
        help="Photos per task: a bigger batch is split into tasks of this many photos (bound them with run --max-workers).",
    )

    @step
    def start(self):
        """Find the UpdatePhotos run through the Metaflow client and take its unseen photos and history.
        An empty batch is not an error: every model branch then has nothing to do and the run ends cleanly."""
        run = scored_update_run(current.branch_name, self.update_run)
        self.update_run_pathspec = run.pathspec
        self.photos = dict(run.data.unseen)
        self.history = dict(run.data.history)
        self.batch_id = str(run.data.batch_id)
        self.batch_date = run.data.batch_date
        self.models = select_models(self.model_list.to_dict(), self.only_models)
        self.prompt_variants = prompt_variants(self.prompt.text, self.prompts.to_dict())
        self.work = fanout.plan(self.models, self.prompt_variants, len(self.photos), self.shard_size, self.concurrency)
        if not self.photos:
            print(f"Nothing to do: {run.pathspec} delivered no new photos.")
        else:
            print(f"Prompting {len(self.models)} models with {len(self.prompt_variants)} prompts on {len(self.photos)} photos "
                  f"of batch {self.batch_id} ({self.batch_date}) in {len(self.work)} tasks.")
        self.next(self.prompt_model, foreach="work")

    @step
    def prompt_model(self):
        """Prompt one shard of the batch with one model and one prompt through `batch.prompt_photos`, which
        keeps one result per photo whatever happens to the call and reuses cached answers."""
        self.item = self.input
        entry, photos = self.item["entry"], fanout.shard_photos(self.photos, self.item)
        self.model_key = fanout.item_model(self.item)
        self.results, self.skip_reason = [], None
        if photos:
            try:
                prompter = make_prompter(entry, list(self.history.values()))
            except ModelSkipped as exc:
                self.skip_reason = str(exc)
                print(f"Skipping {self.model_key}: {exc}")
            else:
                self.results = prompt_photos(
                    prompter,
                    photos,
                    self.item["variant"]["text"],
                    concurrency=self.item["concurrency"],
                    cache=make_cache(not self.no_cache),
                    prices=self.prices.to_dict(),
                    deadline_s=self.model_deadline_s,
                )
        self.next(self.join)

    @step
    def join(self, inputs):
        """Join the shards in photo order into `models_eval` (EvaluationFlow's input), one row per model and prompt;
        summarise each row, list the skipped models, and note which rows broke the error budget (the run fails
        in `end`, after these are stored)."""
        self.merge_artifacts(inputs, include=["photos", "batch_id", "batch_date", "update_run_pathspec", "prompt_variants"])
        results, self.skipped_models = fanout.join(
            ({"item": i.item, "results": i.results, "skip_reason": i.skip_reason} for i in inputs), list(self.photos)
        )
        self.models_eval = {"batch_id": self.batch_id, "batch_date": self.batch_date, "photos": self.photos, "results": results,
                            "prompts": {v["id"]: v["text"] for v in self.prompt_variants}}
        self.summaries = {key: summarise(rows) for key, rows in results.items()}
        self.budget_errors = budget_problems(results, self.max_error_share)
        self.next(self.end)

    @card(type="blank", timeout=CARD_TIMEOUT_S)
    @step
    def end(self):
        """Print what was prompted, the best model and what it cost, and show the same on the run's card;
        fail clearly if a model broke the error budget."""
        lines = run_summary_lines(self.models_eval, self.summaries, self.skipped_models)
        for line in lines:
            print(line)
        current.card.append(Markdown("# PromptModels\n\n" + "\n\n".join(lines)))
        if self.budget_errors:
            counts = sum((Counter(p["counts"]) for p in self.budget_errors.values()), Counter())
            raise ErrorBudgetExceeded("\n".join(p["message"] for p in self.budget_errors.values()), counts)


if __name__ == "__main__":
    PromptModels()
