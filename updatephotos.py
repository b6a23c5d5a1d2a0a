"""UpdatePhotos: ingest the next batch of photos with ground-truth tags.

    python updatephotos.py run                                  # Unsplash if client_id is set, else the demo set
    python updatephotos.py run --source unsplash:search:beach
    python updatephotos.py run --source folder:/data/photos --batch-size 200
    python updatephotos.py run --reset-existing                 # start over on this branch
"""
from phototagger import mfdeploy  # first: it sets Metaflow's Argo defaults before Metaflow reads them

from metaflow import FlowSpec, Parameter, card, current, project, schedule, step

from phototagger import claims, mfclient
from phototagger.errors import checked, count
from phototagger.ingest import batches, state
from phototagger.ingest.sources import SPECS, checked_spec, resolve_source
from phototagger.output import run_card


@mfdeploy.keys_in_steps("start", "fetch")
@project(name="photo_tagger")
@schedule(hourly=True)
class UpdatePhotos(FlowSpec):
    """Deliver photos that no earlier run of this project branch has delivered.

    1) Read what the previous successful run of this branch delivered (its state and its
       `unseen`), unless --reset-existing starts over, and fold its batch into the state:
       `delivered` ids, `tag_stats` and the `reference` sample (ingest/state.py), none of which
       grows with history beyond chunks written once.
    2) Fetch up to --batch-size photos from --source that are not among them, with their
       normalised ground-truth tags, claim each in the datastore so that a run started at the
       same moment cannot deliver it too, and store the won ones as `unseen` for the downstream flows.
       Photos delivered before whose suggestions (export_tags.py) the photographer has reviewed since come again
       in the batch with their corrected ground truth (`corrected` lists them, `reviews` remembers each review).
    3) Print a short summary and render it on a card; an empty batch ends the run cleanly.
    """

    deploy_secrets = mfdeploy.secrets_config()

    source = Parameter(
        "source",
        default="auto",
        callback=checked(checked_spec, local_only=True),
        help="Where photos come from: " + ", ".join(SPECS) + ". 'auto' is unsplash when client_id is set, else demo.",
    )
    batch_size = Parameter(
        "batch-size",
        default=0,
        type=int,
        callback=checked(count),
        help="Most new photos to deliver in this run; 0 uses the source's default (demo: half the set).",
    )
    reset_existing = Parameter(
        "reset-existing",
        default=False,
        type=bool,
        is_flag=True,
        help="Forget what earlier runs of this branch delivered and start over.",
    )

    @step
    def start(self):
        """Check the source spec (and key) before anything else, then read the previous successful
        run of this project branch through the Metaflow client: its state plus its batch is what was
        delivered before this run, so this run can skip those photos without reading every earlier run."""
        self.source_name = resolve_source(self.source).name
        self.notes = []
        previous = None
        if self.reset_existing:
            self.notes.append("Started over (--reset-existing): earlier batches of this branch are not excluded.")
        else:
            previous = mfclient.latest_successful_run(mfclient.UPDATE_FLOW, current.branch_name)
        previous_state = batches.previous_state(previous)
        before = batches.delivered_before(mfclient.DatastoreBlobs(current.flow_name), previous_state, self.reset_existing)
        self.delivered, self.tag_stats, self.reference = before["delivered"], before["tag_stats"], before["reference"]
        self.reviews = {} if self.reset_existing or previous_state is None else dict(previous_state.reviews)
        self.claim_epoch = claims.epoch(previous_state.claim_epoch if previous_state else None, self.reset_existing, current.run_id)
        self.next(self.fetch)

    @step
    def fetch(self):
        """Ask the source for up to --batch-size photos not among the `delivered` ids, keep the ones this run
        wins the claim of as `unseen` (photos another run delivered are folded into `delivered`), labelled
        with this run's id and date so the dashboard can show them as a batch."""
        source = resolve_source(self.source)
        store = mfclient.DatastoreBlobs(current.flow_name)
        run_claims = mfclient.run_claims(current.flow_name, current.branch_name, self.claim_epoch, current.run_id)
        delivered = state.delivered_ids(store, self.delivered)
        claimed = batches.fetch_claimed(source, delivered, self.batch_size or source.default_batch_size, run_claims)
        before = state.IngestState(delivered=self.delivered, tag_stats=self.tag_stats, reference=self.reference)
        after = state.fold_batch(store, before, claimed.elsewhere, seed=f"{current.run_id}-elsewhere")
        self.delivered, self.tag_stats, self.reference = after["delivered"], after["tag_stats"], after["reference"]
        corrections, correction_notes = batches.fetch_corrections(source, delivered, self.reviews, run_claims)
        self.unseen = {**claimed.batch.unseen, **corrections}
        self.corrected = list(corrections)
        self.reviews = batches.reviews_after(self.reviews, self.unseen)
        self.notes = self.notes + claimed.notes + correction_notes
        self.batch_id = str(current.run_id)
        self.batch_date = batches.batch_date()
        self.next(self.end)

    @card(type="html", timeout=mfclient.CARD_TIMEOUT_S)
    @step
    def end(self):
        """Print what this run delivered (an empty batch is a normal, successful outcome: downstream
        flows see `unseen == {}` and have nothing to do) and show the same on the run's card."""
        batch = batches.Batch(self.unseen, self.delivered["count"] - len(self.corrected))
        for line in batches.summary_lines(self.source_name, batch, self.notes):
            print(line)
        self.html = run_card.updatephotos_card(self.source_name, batch, self.notes)


if __name__ == "__main__":
    mfclient.run_cli(UpdatePhotos)
