"""PromptModels: tag the newest batch of photos with every configured model and score the answers.

    python promptmodels.py run                                       # all models of models.json
    python promptmodels.py run --models prior,knn                    # only some (keys or providers)
    python promptmodels.py run --skip-unavailable                    # run those that can, skip those without a key
    python promptmodels.py --config model-list my_models.json run    # another model list
    python promptmodels.py --config prices my_prices.json run        # another price table
    python promptmodels.py --config prompts prompts/demo.json run    # several prompts side by side
    python promptmodels.py run --shard-size 100 --max-workers 8      # 100 photos per task, 8 tasks at once

prompt.txt, models.json, prices.json and vocabulary.json are Metaflow Configs: edit them or pass your own file.
prices.json holds list prices (USD per 1M tokens) published by OpenAI and Together AI in 2025;
they are editable, and a model missing from the table is shown without a cost.
"""
from pathlib import Path

from phototagger import mfdeploy  # first: it sets Metaflow's Argo defaults before Metaflow reads them

from metaflow import Config, FlowSpec, Parameter, card, current, package_sources, project, step, trigger_on_finish

from phototagger.output.run_card import render_run_card
from phototagger.prompting import fanout
from phototagger.prompting.batch import DEFAULT_CONCURRENCY, DEFAULT_MODEL_DEADLINE_S, PromptSettings, prompt_photos
from phototagger.prompting.budget import DEFAULT_MAX_ERROR_SHARE, ErrorBudget, raise_if_broken
from phototagger.prompting.providers import provider_class
from phototagger.prompting.cache import make_cache
from phototagger.prompting.configs import (SKIP_FLAG, ModelSkipped, baseline_history, check_unavailable, make_prompter, model_list_config, prompt_config,
                                           select_models, unavailable_models)
from phototagger.prompting.cost import load_prices, price_results
from phototagger.prompting.summary import run_summary_lines
from phototagger.prompting.variants import prompt_variants, variants_config
from phototagger.scoring.evals import model_key
from phototagger.scoring.metrics import score_results
from phototagger.scoring.table import summarise
from phototagger.scoring.vocabulary import Vocabulary, parse_file
from phototagger import mfclient
from phototagger.mfclient import CARD_TIMEOUT_S, UPDATE_FLOW, once_per_branch, scored_update_run

HERE = Path(__file__).resolve().parent  # the default Configs sit beside this file, wherever it is run from


@package_sources(mfdeploy.PACKAGE_DATA, suffixes=mfdeploy.DATA_SUFFIXES)  # the data files tasks read
@mfdeploy.dependencies_by_role
@mfdeploy.keys_in_steps("start", "prompt_model")  # start decides which models have their key
@project(name="photo_tagger")
@trigger_on_finish(flow=UPDATE_FLOW)
class PromptModels(FlowSpec):
    """Tag a batch of photos with several vision-language models and score them against ground truth.

    1) Read the unseen batch (and, for the offline baselines, the tag counts and the keys of a
       bounded sample of earlier photos, never all of history) from the latest successful
       UpdatePhotos run of this branch, or the run given by --update-run, less any photo whose claim
       another UpdatePhotos run holds (it is scored in that run's batch, once). On a branch's first
       batch the baselines learn from the batch's own keyworded photos instead, each photo left
       out of its own answer (leave-one-out). Decide here which models cannot run (no API key, a
       server that does not answer, nothing to learn from): the run fails naming them, unless
       --skip-unavailable says to run without them.
    2) One branch per runnable model in models.json x prompt variant x shard of --shard-size photos:
       prompt every photo (bounded adaptive concurrency, a share of the model's, response cache,
       retries), score and price; the results are what EvaluationFlow reads.
    3) Join the shards in photo order: store `models_eval` (one row per model and prompt),
       `summaries` and `skipped_models`, and check the error budget of each row.
    4) End: print a three-line summary; fail if a model broke the error budget.
    """

    prompt = Config("prompt", default=str(HERE / "prompt.txt"), parser=prompt_config, help="Plain-text prompt file.")
    prompts = Config(
        "prompts", default_value={"variants": []}, parser=variants_config,
        help='JSON list of named prompts to run side by side, e.g. prompts/demo.json; default: prompt.txt alone, as "default".',
    )
    model_list = Config(
        "model-list", default=str(HERE / "models.json"), parser=model_list_config, help="JSON list of models to prompt (see models.json)."
    )
    prices = Config("prices", default=str(HERE / "prices.json"), help="JSON price table, USD per 1M tokens (see prices.json).")
    vocabulary = Config("vocabulary", default=str(HERE / "vocabulary.json"), parser=parse_file,
                        help="JSON vocabulary of the lenient matching rule: synonyms, stop_tags, parents (see vocabulary.json).")
    deploy_secrets = mfdeploy.secrets_config()
    deploy_images = mfdeploy.images_config()

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
    skip_unavailable = Parameter(
        SKIP_FLAG.lstrip("-"), default=False, type=bool, is_flag=True,
        help="Run the models that can run and skip, with their reason, those that cannot (no key, no server); "
             "without it such a model fails the run in start.",
    )
    shard_size = Parameter(
        "shard-size", default=fanout.DEFAULT_SHARD_SIZE, type=int,
        help="Photos per task: a bigger batch is split into tasks of this many photos (bound them with run --max-workers).",
    )

    @step
    def start(self):
        """Find the UpdatePhotos run through the Metaflow client and take its unseen photos, tag counts and
        reference sample keys. A model that cannot run here (no key, its server not answering, nothing to learn
        from) fails the run now with its fix, unless --skip-unavailable lists it in `skipped_models` instead.
        An empty batch is not an error: every model branch then has nothing to do and the run ends cleanly."""
        run = scored_update_run(current.branch_name, self.update_run)
        data = run.data  # each attribute read loads the artifact again: read each once
        self.update_run_pathspec = run.pathspec
        self.photos, note = once_per_branch(run, current.branch_name, dict(data.unseen))
        if note:
            print(note)
        self.tag_stats, self.reference = data.tag_stats, data.reference
        self.batch_id = str(data.batch_id)
        self.batch_date = data.batch_date
        self.learns_from_batch = not self.tag_stats["photos"]  # first batch: the baselines learn leave-one-out
        keyworded = sum(1 for photo in self.photos.values() if photo.get("ground_truth_tags"))
        configured = select_models(self.model_list.to_dict(), self.only_models)
        self.prompt_variants = prompt_variants(self.prompt.text, self.prompts.to_dict())
        can_learn = bool(self.tag_stats["photos"] or keyworded > 1)
        self.skipped_models = unavailable_models(configured, can_learn) if self.photos else {}
        runnable = [e for e in configured if model_key(e["provider"], e["model"]) not in self.skipped_models] if self.photos else []
        check_unavailable(self.skipped_models, runnable, self.skip_unavailable)
        for key, reason in self.skipped_models.items():
            print(f"Skipping {key}: {reason}")
        work = fanout.plan(runnable, self.prompt_variants, len(self.photos), self.shard_size, self.concurrency)
        if not self.photos:
            print(f"Nothing to do: {run.pathspec} delivered no new photos.")
        else:
            print(f"Prompting {len(runnable)} models with {len(self.prompt_variants)} prompts on {len(self.photos)} photos "
                  f"of batch {self.batch_id} ({self.batch_date}) in {len(work)} tasks.")
            learners = [model_key(e["provider"], e["model"]) for e in runnable if provider_class(e["provider"]).learns_from_history]
            if learners and self.learns_from_batch:
                print(f"No earlier batch: {', '.join(learners)} learn from this batch's {keyworded} keyworded photos, "
                      "each photo's answer from the others only (leave-one-out).")
        self.work = work or [None]  # a foreach needs one split: with nothing to run, one empty task
        self.next(self.prompt_model, foreach="work")

    @step
    def prompt_model(self):
        """Prompt one shard of the batch with one model and one prompt through `batch.prompt_photos`, which
        keeps one result per photo whatever happens to the call and reuses cached answers; then score and price them."""
        self.item = self.input
        self.model_key = fanout.item_model(self.item) if self.item else None
        self.results, self.skip_reason = [], None
        if self.item:
            entry, photos = self.item["entry"], fanout.shard_photos(self.photos, self.item)
            history, tag_stats = baseline_history(entry, self.photos, self.learns_from_batch, self.reference, self.tag_stats)
            try:
                prompter = make_prompter(entry, history, tag_stats)
            except ModelSkipped as exc:
                self.skip_reason = str(exc)
                print(f"Skipping {self.model_key}: {exc}")
            else:
                prices = load_prices(self.prices.to_dict())  # a bad table fails before any call
                vocabulary = Vocabulary.from_dict(self.vocabulary.to_dict())
                settings = PromptSettings(concurrency=self.item["concurrency"], deadline_s=self.model_deadline_s)
                results = prompt_photos(prompter, photos, self.item["variant"]["text"], settings, cache=make_cache(not self.no_cache))
                self.results = price_results(score_results(photos, results, vocabulary), prices)
        self.next(self.join)

    @step
    def join(self, inputs):
        """Join the shards in photo order into `models_eval` (EvaluationFlow's input), one row per model and prompt;
        summarise each row, list the skipped models, and note which rows broke the error budget (the run fails
        in `end`, after these are stored)."""
        self.merge_artifacts(inputs, include=["photos", "batch_id", "batch_date", "update_run_pathspec", "skipped_models",
                                              "prompt_variants"])
        results, skipped = fanout.join(
            ({"item": i.item, "results": i.results, "skip_reason": i.skip_reason} for i in inputs if i.item), list(self.photos)
        )
        self.skipped_models = {**self.skipped_models, **skipped}
        self.models_eval = fanout.models_eval(self.batch_id, self.batch_date, self.photos, results, self.prompt_variants)
        self.summaries = {key: summarise(rows) for key, rows in results.items()}
        self.budget_errors = ErrorBudget(self.max_error_share).check(results)
        self.next(self.end)

    @card(type="html", timeout=CARD_TIMEOUT_S)
    @step
    def end(self):
        """Print what was prompted, the best model and what it cost, and show the same on the run's card;
        fail clearly if a model broke the error budget."""
        lines = run_summary_lines(self.models_eval, self.summaries, self.skipped_models, failed=bool(self.budget_errors),
                                  branch=current.branch_name)
        for line in lines:
            print(line)
        self.html = render_run_card("PromptModels", lines)
        raise_if_broken(self.budget_errors)


if __name__ == "__main__":
    mfclient.run_cli(PromptModels)
