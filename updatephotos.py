"""UpdatePhotos: ingest the next batch of photos with ground-truth tags.

    python updatephotos.py run                                  # Unsplash if client_id is set, else the demo set
    python updatephotos.py run --source unsplash:search:beach
    python updatephotos.py run --source folder:/data/photos --batch-size 200
    python updatephotos.py run --claim-lease-seconds 120        # a killed run's photos come back after 2 minutes
    python updatephotos.py run --reset-existing                 # rebuild this branch's history from its claims
"""
from phototagger import mfdeploy  # first: it sets Metaflow's Argo defaults before Metaflow reads them

from metaflow import FlowSpec, Parameter, card, current, package_sources, project, schedule, step

from phototagger import claims, mfclient
from phototagger.errors import checked, count, lease_seconds
from phototagger.ingest import batches, state
from phototagger.ingest.sources import SPECS, checked_spec, resolve_source
from phototagger.output import run_card


@package_sources(mfdeploy.PACKAGE_DATA, suffixes=mfdeploy.DATA_SUFFIXES)  # the data files tasks read
@mfdeploy.dependencies_by_role
@mfdeploy.keys_in_steps("start", "fetch")
@project(name="photo_tagger")
@schedule(hourly=True)
class UpdatePhotos(FlowSpec):
    """Deliver photos that no earlier run of this project branch has delivered.

    1) Read what the previous successful run of this branch delivered (its state and its
       `unseen`), unless --reset-existing rebuilds it from the claims, and fold its batch into the state:
       `delivered` ids, `tag_stats` and the `reference` sample (ingest/state.py), none of which
       grows with history beyond chunks written once.
    2) Fetch up to --batch-size photos from --source that are not among them, with their
       normalised ground-truth tags, claim each in the datastore so that a run started at the
       same moment cannot deliver it too (a claim is a lease, renewed while this run is alive; the claims
       of a run that failed or stopped heartbeating are taken over), and keep the won ones.
    3) Check the claims once more and store the photos still this run's as `unseen` for the downstream
       flows (a resume reuses its origin's `fetch`: photos another run took over since are dropped);
       print a short summary and render it on a card; an empty batch ends the run cleanly.
    """

    deploy_secrets = mfdeploy.secrets_config()
    deploy_images = mfdeploy.images_config()

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
        help="Forget the state carried from run to run and rebuild it from the claims (every photo of the source "
        "is checked once); a photo delivered before is never delivered again.",
    )
    claim_lease_seconds = Parameter(
        "claim-lease-seconds",
        default=claims.DEFAULT_LEASE_S,
        type=int,
        callback=checked(lease_seconds),
        help="Seconds after this run's last heartbeat (renewed while it is alive) before a later run may take over "
        "the photos it claimed, if it was killed or lost without failing.",
    )

    @step
    def start(self):
        """Check the source spec (and key) before anything else, then read the previous successful
        run of this project branch through the Metaflow client: its state plus its batch is what was
        delivered before this run, so this run can skip those photos without reading every earlier run."""
        self.source_name = resolve_source(self.source).name
        self.notes = []
        if self.reset_existing:
            self.notes.append("Rebuilt the history from the claims (--reset-existing): photos delivered before are skipped, not delivered again.")
        previous = mfclient.latest_successful_run(mfclient.UPDATE_FLOW, current.branch_name)
        previous_state = batches.previous_state(previous)
        before = batches.delivered_before(mfclient.DatastoreBlobs(current.flow_name), previous_state, self.reset_existing)
        self.delivered, self.tag_stats, self.reference = before["delivered"], before["tag_stats"], before["reference"]
        self.claim_epoch = claims.epoch(previous_state.claim_epoch if previous_state else None)
        self.next(self.fetch)

    @step
    def fetch(self):
        """Ask the source for up to --batch-size photos not among the `delivered` ids, keep the ones this run
        wins the claim of as `unseen` (photos another run delivered are folded into `delivered`), labelled
        with this run's id and date so the dashboard can show them as a batch."""
        source = resolve_source(self.source)
        store = mfclient.DatastoreBlobs(current.flow_name)
        run_claims = mfclient.run_claims(current.flow_name, current.branch_name, self.claim_epoch, current.run_id,
                                         self.claim_lease_seconds, ancestors=[current.origin_run_id])
        delivered = state.delivered_ids(store, self.delivered)
        with run_claims.heartbeat():
            claimed = batches.fetch_claimed(source, delivered, self.batch_size or source.default_batch_size, run_claims)
        before = state.IngestState(delivered=self.delivered, tag_stats=self.tag_stats, reference=self.reference)
        after = state.fold_batch(store, before, claimed.elsewhere, seed=f"{current.run_id}-elsewhere")
        self.delivered, self.tag_stats, self.reference = after["delivered"], after["tag_stats"], after["reference"]
        self.claimed = claimed.batch.unseen
        self.claim_holder = str(current.run_id)
        self.notes = self.notes + claimed.notes
        self.next(self.end)

    @card(type="html", timeout=mfclient.CARD_TIMEOUT_S)
    @step
    def end(self):
        """Check the claims of this run's photos once more, here, because a resume or a retry reuses the
        `fetch` of a run that may have been taken over since: keep as `unseen` the photos whose newest
        claim is this run's (taking over those of the run it resumes, unless that run delivered them),
        labelled with this run's id and date. Then print what this run delivered (an empty batch is a normal,
        successful outcome: downstream flows see `unseen == {}` and have nothing to do) and show it on the card."""
        run_claims = mfclient.run_claims(current.flow_name, current.branch_name, self.claim_epoch, current.run_id,
                                         self.claim_lease_seconds, ancestors=[self.claim_holder, current.origin_run_id])
        with run_claims.heartbeat():
            self.unseen, dropped = batches.confirm_batch(self.claimed, run_claims)
        self.notes = self.notes + dropped
        self.batch_id = str(current.run_id)
        self.batch_date = batches.batch_date()
        batch = batches.Batch(self.unseen, self.delivered["count"])
        for line in batches.summary_lines(self.source_name, batch, self.notes):
            print(line)
        self.html = run_card.updatephotos_card(self.source_name, batch, self.notes)


if __name__ == "__main__":
    mfclient.run_cli(UpdatePhotos)
