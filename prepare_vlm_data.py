"""PrepareVLMData: curate the fine-tune dataset from the photos UpdatePhotos delivered.

    python prepare_vlm_data.py run                          # extend this branch's dataset with new photos
    python prepare_vlm_data.py run --force-rebuild          # build the dataset anew from every photo
    python prepare_vlm_data.py run --min-tags 5 --max-samples 200
    python check_data.py                                    # then: fast sanity check of the result
    python diagnose_data.py --processor Qwen/Qwen2.5-VL-3B-Instruct   # deep report with token lengths

Photos held out for evaluation (the newest batch, which the prompt flows score, and every photo a
fine-tuned model was scored on by PromptCustomModels) never become examples, so the fine-tuned model
is never graded on what it trained on. `--holdout-flows PromptModels,PromptCustomModels` also keeps
out every photo a vendor model was scored on (strict; then only unscored batches train).
"""
from dataclasses import asdict
from pathlib import Path

from phototagger import mfdeploy  # first: it sets Metaflow's Argo defaults before Metaflow reads them

from metaflow import Config, FlowSpec, Parameter, card, current, package_sources, project, step, trigger_on_finish

from phototagger.training import vlm
from phototagger.prompting.configs import prompt_config
from phototagger.training import curate as curation
from phototagger import mfclient
from phototagger.output import run_card
from phototagger.errors import UserError
from phototagger.mfclient import CARD_TIMEOUT_S, DATASET_FLOW, UPDATE_FLOW, latest_successful_run, runs_of

HERE = Path(__file__).resolve().parent  # the default prompt sits beside this file, wherever it is run from


@package_sources(mfdeploy.PACKAGE_DATA, suffixes=mfdeploy.DATA_SUFFIXES)  # the data files tasks read
@mfdeploy.dependencies_by_role
@project(name="photo_tagger")
@trigger_on_finish(flow=UPDATE_FLOW)
class PrepareVLMData(FlowSpec):
    """Turn ingested photos into Qwen2.5-VL chat examples for FineTuneVLM, keeping evaluation photos out.

    1) Read through the Metaflow client, for this project branch: the photos of the successful
       UpdatePhotos runs (only those the previous dataset has not included, when extending it),
       the held-out photo ids (the newest batch and every photo a prompt flow scored), and the
       previous PrepareVLMData dataset.
    2) Curate: check each photo's tags and image, leave out held-out photos and duplicates, split
       train/validation by a seeded hash of the photo id, and keep a report of every photo left out.
    3) End: print a summary and show the counts and the dropped-photo report on a card.
    """

    deploy_images = mfdeploy.images_config()

    prompt = Config("prompt", default=str(HERE / "prompt.txt"), parser=prompt_config, help="Plain-text prompt file (the prompt flows read the same one).")

    min_tags = Parameter("min-tags", default=curation.DEFAULT_MIN_TAGS, type=int, help="Leave out photos with fewer ground-truth tags than this.")
    max_samples = Parameter("max-samples", default=0, type=int, help="Most examples in the dataset (earliest photos first); 0 keeps every photo that passes.")
    force_rebuild = Parameter(
        "force-rebuild",
        default=False,
        type=bool,
        is_flag=True,
        help="Build the dataset anew from every photo of this branch; without it, the previous dataset is extended with new photos only.",
    )
    validation_share = Parameter(
        "validation-share",
        default=curation.DEFAULT_VALIDATION_SHARE,
        type=float,
        help="Share of photos in the validation split (at least one photo once there are two).",
    )
    seed = Parameter("seed", default=curation.DEFAULT_SEED, type=int, help="Seed of the train/validation split (a hash of seed and photo id).")
    min_pixels = Parameter(
        "min-pixels", default=vlm.DEFAULT_MIN_PIXELS, type=int, help="Smallest image area the processor scales photos up to (stored for FineTuneVLM and inference)."
    )
    max_pixels = Parameter(
        "max-pixels", default=vlm.DEFAULT_MAX_PIXELS, type=int, help="Largest image area the processor scales photos down to: caps image tokens per example."
    )
    holdout_flows = Parameter(
        "holdout-flows",
        default=",".join(curation.DEFAULT_HOLDOUT_FLOWS),
        help="Comma-separated flows whose scored photos never enter training, besides the newest batch.",
    )
    min_side = Parameter("min-side", default=curation.DEFAULT_MIN_SIDE, type=int, help="Leave out photos whose shorter side has fewer pixels than this.")
    max_side = Parameter("max-side", default=curation.DEFAULT_MAX_SIDE, type=int, help="Leave out photos whose longer side has more pixels than this.")

    def _settings(self) -> curation.CurationSettings:
        return curation.CurationSettings(
            prompt_text=self.prompt.text,
            min_tags=self.min_tags,
            min_side=self.min_side,
            max_side=self.max_side,
            validation_share=self.validation_share,
            seed=self.seed,
            max_samples=self.max_samples,
        )

    @step
    def start(self):
        """Check the settings, then read this branch's inputs through the Metaflow client: the previous
        dataset (when it can be extended), the batches of the UpdatePhotos runs it has not included yet
        (all of them when building anew), and the ids held out for evaluation."""
        if self.min_pixels > self.max_pixels:
            raise UserError(f"--min-pixels {self.min_pixels} is above --max-pixels {self.max_pixels}", "swap or fix them")
        settings = self._settings()
        branch = current.branch_name
        update_runs = list(runs_of(UPDATE_FLOW, branch))
        if not update_runs:
            raise mfclient.no_run_error(UPDATE_FLOW, branch)
        previous, self.notes = curation.previous_dataset(None if self.force_rebuild else latest_successful_run(DATASET_FLOW, branch), settings)
        self.notes = self.notes or ["Building the dataset from every photo of this branch."]
        self.previous_state = asdict(previous) if previous else None
        self.update_batches = curation.read_batches(update_runs, skip=previous.included_update_runs if previous else ())
        self.held_out_ids = curation.held_out_ids(update_runs, (run for flow in self.holdout_flows.split(",") if flow.strip() for run in runs_of(flow.strip(), branch)))
        self.next(self.curate)

    @step
    def curate(self):
        """Check every photo not yet in the dataset (tags first, then the image through the loader training
        uses), leave out held-out photos and duplicates, split the rest by a seeded hash of the photo id,
        and store the examples with the report of every photo left out and why."""
        previous = curation.Dataset(**self.previous_state) if self.previous_state else None
        dataset = curation.curate(self.update_batches, self.held_out_ids, self._settings(), previous, notes=self.notes)
        self.train_examples = dataset.train_examples
        self.validation_examples = dataset.validation_examples
        self.dropped = dataset.dropped
        self.image_digests = dataset.image_digests
        self.pending_photos = dataset.pending_photos
        self.included_update_runs = dataset.included_update_runs
        self.curation_settings = dataset.settings
        self.notes = dataset.notes
        self.prompt_text = self.prompt.text
        self.prompt_hash = curation.prompt_hash(self.prompt_text)
        self.next(self.end)

    @card(type="html", timeout=CARD_TIMEOUT_S)
    @step
    def end(self):
        """Print how many examples each split holds and how many photos were left out for what, and show
        the same with every dropped photo and its reason on the run's card."""
        dataset = curation.Dataset(
            train_examples=self.train_examples,
            validation_examples=self.validation_examples,
            dropped=self.dropped,
            included_update_runs=self.included_update_runs,
            notes=self.notes,
        )
        for line in curation.summary_lines(dataset, len(self.held_out_ids)):
            print(line)
        self.html = run_card.dataset_card(dataset, len(self.held_out_ids))


if __name__ == "__main__":
    mfclient.run_cli(PrepareVLMData)
