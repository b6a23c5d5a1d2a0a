"""What PromptCustomModels tags: the newest batch minus the photos the adapter trained on, and with which adapter.

Kept out of the flow so its start step stays a few lines and this runs in tests against any Metaflow client.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from phototagger import mfclient
from phototagger.records import Photo
from phototagger.training.vlm import adapter_model_name


@dataclass
class CustomBatch:
    update_run_pathspec: str
    batch_id: str
    batch_date: str
    photos: dict[str, Photo] = field(default_factory=dict)  # id -> photo, the adapter's training photos left out
    excluded_trained_ids: list[str] = field(default_factory=list)
    model_name: str = ""  # "<base>-lora-<FineTuneVLM run id>"; empty when no adapter was trained yet
    finetune_run_pathspec: str = ""
    finetune_meta: Optional[dict[str, Any]] = None
    message: str = ""  # one line for the user


def unseen_by_adapter(unseen: Mapping[str, Photo], trained_on: set) -> tuple[dict[str, Photo], list[str]]:
    """(photos the adapter never trained on, sorted ids of those it did): scores measure unseen photos only."""
    return {pid: p for pid, p in unseen.items() if pid not in trained_on}, sorted(pid for pid in unseen if pid in trained_on)


def plan_custom_batch(branch: Optional[str], update_run: str = "", finetune_run: str = "", base_model: str = "") -> CustomBatch:
    """Read the UpdatePhotos run and the FineTuneVLM adapter (the ones named, else the latest of `branch`)
    and decide what to tag; no adapter yet is not an error, the batch is then empty and says why."""
    update = mfclient.scored_update_run(branch, update_run)
    data = update.data  # a client Run lists its artifacts anew on every `.data`
    batch = CustomBatch(update.pathspec, str(data.batch_id), data.batch_date)
    finetune, meta = mfclient.adapter_run(branch, finetune_run)
    if finetune is None:
        batch.message = (
            f"Nothing to evaluate: no FineTuneVLM run on branch {branch} has trained an adapter yet "
            f"(run `{mfclient.flow_command(mfclient.DATASET_FLOW, branch)}` on tagged photos, "
            f"then `{mfclient.flow_command(mfclient.FINETUNE_FLOW, branch)}`)."
        )
        return batch
    dataset = mfclient.resolve_run(mfclient.DATASET_FLOW, None, meta["dataset_run"])
    trained_on = {example.get("photo_id") for example in dataset.data.train_examples}
    batch.photos, batch.excluded_trained_ids = unseen_by_adapter(dict(data.unseen), trained_on)
    batch.finetune_run_pathspec, batch.finetune_meta = finetune.pathspec, meta
    batch.model_name = adapter_model_name(base_model or meta["base_model"], finetune.id)
    lines = [f"Leaving out {len(batch.excluded_trained_ids)} photos the adapter was trained on."] if batch.excluded_trained_ids else []
    if not batch.photos:
        lines.append(f"Nothing to do: {update.pathspec} has no photos the adapter has not seen.")
    else:
        lines.append(f"Tagging {len(batch.photos)} photos of batch {batch.batch_id} ({batch.batch_date}) "
                     f"with finetuned:{batch.model_name} from {finetune.pathspec}.")
    batch.message = "\n".join(lines)
    return batch
