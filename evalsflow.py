"""EvaluationFlow: rank the models on every batch they have tagged, as a dashboard card."""
import time
from pathlib import Path

from phototagger import mfdeploy  # first: it sets Metaflow's Argo defaults before Metaflow reads them

from metaflow import Config, FlowSpec, Parameter, card, current, package_sources, project, step, trigger_on_finish

from phototagger import mfclient
from phototagger.output import dashboard
from phototagger.scoring import evals, metrics
from phototagger.scoring.ranking import rank
from phototagger.scoring.table import SORT_METRICS, STATE_VERSION, ScoreState, photo_frame, to_parquet
from phototagger.scoring.vocabulary import Vocabulary, change_note, fingerprint, parse_file
from phototagger.mfclient import (CARD_TIMEOUT_S, GIVE_UP_S, PROMPT_FLOW, PROMPT_FLOWS, DatastoreBlobs, FoldedRuns,
                                  latest_successful_run, runs_of)
from phototagger.output.thumbnails import thumbnails

VOCABULARY = str(Path(__file__).resolve().with_name("vocabulary.json"))


@package_sources(mfdeploy.PACKAGE_DATA, suffixes=mfdeploy.DATA_SUFFIXES)  # the data files tasks read
@mfdeploy.dependencies_by_role
# Deployed, a Sensor on two flows waits for both (Argo Events resolves every dependency before it
# triggers), and the quick baseline path has no PromptCustomModels run: the hourly PromptModels run
# triggers the dashboard, and `collect` folds every prompt flow's runs that finished since.
@trigger_on_finish(flow=PROMPT_FLOW)
@project(name="photo_tagger")
class EvaluationFlow(FlowSpec):
    """Fold the prompt flows' per-photo results into one model ranking and render it as a card.

    1) Load the state (`state`: tables of sums per (model, prompt) row and batch, scoring/table.py), the skipped models and the list of folded runs from this flow's previous successful run
       of the same project branch (or start empty with --rebuild).
    2) Read the `models_eval` artifact of each PromptModels and PromptCustomModels run not folded
       before, score its results under both matching rules with this flow's vocabulary, fold them
       into the state (a photo counts once per branch: in the batch of the UpdatePhotos run holding its
       claim), a rerun of a batch replacing the earlier answers, and store them as
       `photo_results` (Parquet bytes): only this run's new rows. Each model skipped by a run
       (`skipped_models`) keeps the reason of its latest run.
    3) Rank the (model, prompt) rows in a paired order of --sort-by (docs/metrics.md), with 95% t-intervals and
       Holm-corrected paired comparisons with the best one (from the sums over shared photos), store the ranking (`ranking`, the `evals` table of DESIGN.md,
       `per_tag`) and render the dashboard card: ranking, skipped models and error classes, recall vs
       latency chart, per-tag view and a capped per-photo drill-down.
    What a run loads, computes and stores is bounded by the new runs and about a month of batch sums;
    the state holds scored totals, so a changed vocabulary scores the answers folded from then on, and
    --rebuild scores all history again under it.
    """

    deploy_images = mfdeploy.images_config()

    vocabulary = Config("vocabulary", default=VOCABULARY, parser=parse_file,
                        help="JSON vocabulary of the lenient matching rule: synonyms, stop_tags, parents (see vocabulary.json).")

    rebuild = Parameter(
        "rebuild",
        type=bool,
        default=False,
        is_flag=True,
        help="Refold all history instead of starting from the previous EvaluationFlow run.",
    )
    sort_by = Parameter("sort-by", default="recall",
                        help="What orders the ranking: recall or F1 over all photos (a failed call as 0), paired on "
                             "the photos both rows answered. F1 keeps a model that answers with every tag from winning.")
    title = Parameter("title", default=dashboard.DEFAULT_TITLE, help="Title shown at the top of the dashboard card.")

    @step
    def start(self):
        """Load the accumulated state of the previous successful run of this branch, so this run reads only
        the prompt runs that finished since; with --rebuild, start from nothing and refold everything."""
        if self.sort_by not in SORT_METRICS:
            raise mfclient.UserError(f"--sort-by {self.sort_by} is not a sort metric", f"use one of {', '.join(SORT_METRICS)}")
        previous = None if self.rebuild else latest_successful_run(current.flow_name, current.branch_name)
        if previous is None:
            mfclient.require_prompt_runs(current.branch_name)
        try:
            stored = previous.data.state if previous and "state" in previous.data else None
        except (ImportError, AttributeError):  # a state of a scoring module since replaced
            stored = None
        if previous is not None and getattr(stored, "version", 1) != STATE_VERSION:
            print(f"{previous.pathspec} scored under earlier definitions (docs/metrics.md): refolding all history once.")
            stored = None
        self.state = stored or ScoreState()
        self.folded_runs = previous.data.folded_runs if stored else FoldedRuns()
        carried = previous is not None and "skipped_models" in previous.data
        self.skipped_models = dict(previous.data.skipped_models) if carried else {}
        closed = len(self.state.closed.batches)
        months = f" and {closed} closed months" if closed else ""
        print(f"Starting from {len(self.state.open.batches)} batches{months}"
              + (f" of {previous.pathspec}." if previous else "."))
        self.vocabulary_fingerprint = fingerprint(self.vocabulary.to_dict())
        earlier = previous.data.vocabulary_fingerprint if previous and "vocabulary_fingerprint" in previous.data else None
        note = change_note(earlier, self.vocabulary_fingerprint)
        if note:
            print(note)
        self.next(self.collect)

    @step
    def collect(self):
        """Read the stored results (`models_eval`) of every successful prompt run of this branch not folded
        before, oldest first, score them with this flow's vocabulary, fold them into the state and store them,
        and only them, as `photo_results`; fold the models they skipped into `skipped_models`, and the models
        of failed runs that broke the error budget too (runs still going are read once they end)."""
        listed = {run.pathspec: run for flow in PROMPT_FLOWS
                  for run in runs_of(flow, current.branch_name, successful_only=False, created_since=self.folded_runs.horizon)}
        unread = [run for pathspec, run in listed.items() if pathspec not in self.folded_runs]
        new_runs = sorted((run for run in unread if run.successful or mfclient.run_state(*run.pathspec.split("/")) == "failed"),
                          key=lambda run: run.created_at)
        folded = {run.pathspec for run in new_runs}
        self.folded_runs, given_up = self.folded_runs.advance(
            {pathspec: run.created_at.timestamp() for pathspec, run in listed.items()}, folded,
            [run.pathspec for run in unread if run.pathspec not in folded], time.time())
        for pathspec in given_up:
            print(f"{pathspec} has not ended in {GIVE_UP_S / 86400:.0f} days, so it is not folded: "
                  f"run its flow again on its batch (--update-run) to count it.")
        new_events = []
        for run in new_runs:
            prompt_run = next(evals.read_runs([run]) if run.successful else evals.budget_failures([run]))
            events, note = mfclient.events_once_per_branch(run, current.branch_name, prompt_run.events)
            prompt_run = prompt_run._replace(events=events)
            if note:
                print(note)
            skipped = f", skipped {', '.join(prompt_run.skipped)}" if prompt_run.skipped else ""
            print(f"{prompt_run.pathspec}: {len(prompt_run.events)} events{skipped}")
            new_events += prompt_run.events
            self.skipped_models = evals.fold_skipped(self.skipped_models, prompt_run)
        new_events = metrics.rescore(evals.fold_events([], new_events), Vocabulary.from_dict(self.vocabulary.to_dict()))
        self.state = self.state.fold(new_events, DatastoreBlobs(current.flow_name))
        self.photo_results = to_parquet(photo_frame(new_events))
        self.next(self.end)

    @card(type="html", id="dashboard", timeout=CARD_TIMEOUT_S)
    @step
    def end(self):
        """Rank the models, store the ranking as `ranking` and as the `evals` table, fetch the thumbnails the
        drill-down shows, and render the dashboard into `html`, which the html card shows as it is."""
        recent = self.state.recent_events(DatastoreBlobs(current.flow_name))
        ranking = rank(self.state, recent, skipped=self.skipped_models, sort_by=self.sort_by)
        self.ranking = ranking.to_dict()
        self.evals = ranking.table()
        self.per_tag = ranking.per_tag
        thumbs = thumbnails(dashboard.drilldown_image_urls(recent))
        self.html = dashboard.render_dashboard(ranking, recent, title=self.title, thumbs=thumbs)
        best = ranking.best
        if best:
            print(f"Best model: {best.key} ({self.sort_by} over all photos {best.mean(self.sort_by + '_all'):.1f}%, "
                  f"a failed call as 0; precision {best.mean('precision_all'):.1f}%, error {best.error_pct:.1f}%)")
            for row in ranking.rows[1:]:
                verdict = ("behind beyond noise" if row.behind_best else "tied" if row.tied_with_best
                           else "not compared: too few shared photos")
                if row.vs_best is not None:
                    print(f"  {row.key}: {row.vs_best.mean:+.1f} on {row.vs_best.n} shared photos, {verdict}")
            if ranking.comparisons:
                print(f"  (paired on the photos both answered; Holm-corrected over {ranking.comparisons} comparisons)")
        else:
            print(
                f"No model has a valid answer yet: run `{mfclient.flow_command(mfclient.PROMPT_FLOW, current.branch_name)}` "
                "(after updatephotos.py), then this flow again."
                if not ranking.rows
                else "No model has a valid answer yet: see the Error % column and the drill-down on the card."
            )
        print(f"Dashboard: {mfclient.script_command('evalsflow.py', 'card', 'get', f'{current.run_id}/end', 'dashboard.html')}")


if __name__ == "__main__":
    mfclient.run_cli(EvaluationFlow)
