"""Curating the fine-tune dataset: which photos become training examples, in which split, and why the others do not.

PrepareVLMData is a thin shell around this module. It hands over the photos of UpdatePhotos runs,
the runs whose `models_eval` name the photos already scored, and the previous dataset; everything
else happens here, without Metaflow, so tests run the same code on photos built in a temp dir.

Rules a reader can rely on:
- Leak guard: a photo of the newest batch (the one the prompt flows score) or of any `models_eval`
  never becomes an example, in either split, and an earlier example that became held out leaves.
- The split is a seeded hash of the photo id, and an incremental run keeps every earlier example
  in the split it had, so extending the dataset never moves a photo between train and validation.
- Every photo left out is reported with a reason: `held_out`, `too_few_tags`, `bad_image`,
  `too_small`, `too_large`, `duplicate` or `over_max_samples` (a detail may follow after ": ").
- Targets are the photo's own normalised tags, in `{"tags": [...]}` form: no padding, no filler. A model's
  suggestion is among them only once the photographer confirmed it (provenance.py); a photo delivered again
  after a review answers with its corrected tags, in the split it had.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, NamedTuple, Optional, Sequence, TypedDict

from PIL import Image

from phototagger.training import vlm
from phototagger.http import ImageFetchError, LocalImage
from phototagger import mfclient
from phototagger.images import load_image, photo_image
from phototagger.records import Photo
from phototagger.scoring.tags import normalise_tags

log = logging.getLogger(__name__)

# Flows whose scored photos stay out of training for good. By default the fine-tuned model's own
# evaluations: PromptModels scores every hourly batch, so holding those out too would leave nothing
# to train on; the newest batch, which both prompt flows score next, is always held out.
DEFAULT_HOLDOUT_FLOWS = (mfclient.CUSTOM_PROMPT_FLOW,)

DEFAULT_MIN_TAGS = 3
DEFAULT_MIN_SIDE = 64  # pixels; a smaller photo is a thumbnail or an icon, not something to tag
DEFAULT_MAX_SIDE = 12_000  # pixels; larger is a scan or a panorama the processor would shrink to mush
MAX_ASPECT_RATIO = 200  # Qwen2-VL's smart_resize refuses anything more elongated
DEFAULT_VALIDATION_SHARE = 0.1
DEFAULT_SEED = 42
DEFAULT_WORKERS = 8  # image checks in flight (URLs are fetched, so this is I/O bound)

# Reasons that can pass later without the photo changing: held out (the newest batch ages out),
# over the cap (a larger --max-samples), image not fetched (a server or network hiccup). The photos
# dropped for them are kept as `pending_photos` and looked at again by the next incremental run.
RETRY_REASONS = frozenset({"held_out", "over_max_samples", "bad_image"})


class TrainingExample(TypedDict):
    """One chat in the Qwen2.5-VL format (DESIGN.md), with the photo's tags kept beside it."""

    messages: list[dict[str, Any]]
    ground_truth_tags: list[str]
    photo_id: str


class DroppedPhoto(TypedDict):
    photo_id: str
    reason: str  # "<code>" or "<code>: <detail>", code in curate's module docstring


class UpdateBatch(TypedDict):
    """The photos one UpdatePhotos run delivered (its `unseen`), by id; a plain dict, so it can be an artifact."""

    pathspec: str
    photos: dict[str, Photo]


class PhotoCheck(NamedTuple):
    reason: Optional[str]  # why the photo cannot be an example; None when it can
    image_digest: Optional[str]  # sha256 of the decoded pixels, when the image loaded


@dataclass(frozen=True)
class CurationSettings:
    """What shapes the dataset. All but `max_samples` are in `fingerprint()`: changing one rebuilds."""

    prompt_text: str
    min_tags: int = DEFAULT_MIN_TAGS
    min_side: int = DEFAULT_MIN_SIDE
    max_side: int = DEFAULT_MAX_SIDE
    validation_share: float = DEFAULT_VALIDATION_SHARE
    seed: int = DEFAULT_SEED
    max_samples: int = 0  # 0 = no cap

    def __post_init__(self) -> None:
        if not self.prompt_text.strip():
            raise ValueError("The prompt is empty: put the prompt in prompt.txt or pass --config prompt FILE")
        if self.min_tags < 1:
            raise ValueError(f"--min-tags must be at least 1, got {self.min_tags}: a target needs a tag")
        if not 0 < self.min_side <= self.max_side:
            raise ValueError(f"need 0 < --min-side <= --max-side, got {self.min_side} and {self.max_side}")
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(f"--validation-share must be in [0, 1), got {self.validation_share}")
        if self.max_samples < 0:
            raise ValueError(f"--max-samples must be 0 (all photos) or positive, got {self.max_samples}")

    def fingerprint(self) -> dict[str, Any]:
        return {
            "prompt_hash": prompt_hash(self.prompt_text),
            "min_tags": self.min_tags,
            "min_side": self.min_side,
            "max_side": self.max_side,
            "validation_share": self.validation_share,
            "seed": self.seed,
        }


@dataclass
class Dataset:
    """A curated dataset: the PrepareVLMData artifacts of the same names, plus what the next run reuses."""

    train_examples: list[TrainingExample] = field(default_factory=list)
    validation_examples: list[TrainingExample] = field(default_factory=list)
    dropped: list[DroppedPhoto] = field(default_factory=list)
    image_digests: dict[str, str] = field(default_factory=dict)  # example photo id -> pixel digest
    pending_photos: dict[str, Photo] = field(default_factory=dict)  # dropped for a RETRY_REASONS reason
    included_update_runs: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # CurationSettings.fingerprint()
    notes: list[str] = field(default_factory=list)  # user-facing lines about this build


# ---------------------------------------------------------------- examples
def prompt_hash(prompt_text: str) -> str:
    """First 12 hex digits of the prompt's sha256: enough to tell prompts apart in artifacts and cards."""
    return hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()[:12]


def make_example(photo: Photo, prompt_text: str) -> TrainingExample:
    """The chat a model learns from: the prompt and the image, answered with the photo's real tags as JSON.

    Non-ASCII tags stay readable (ensure_ascii=False), so the model learns "café", not "caf\\u00e9".
    """
    tags = normalise_tags(photo.get("ground_truth_tags") or [])
    answer = json.dumps({"tags": tags}, ensure_ascii=False)
    return {
        "messages": [
            vlm.user_message(prompt_text, photo["image_url"]),
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "ground_truth_tags": tags,
        "photo_id": str(photo["id"]),
        **({"image_root": image.root} if isinstance(image := photo_image(photo), LocalImage) else {}),
    }


def _content_part(example: Mapping[str, Any], role: str, kind: str) -> Any:
    for message in example["messages"]:
        if message.get("role") == role:
            for part in message.get("content") or ():
                if isinstance(part, Mapping) and part.get("type") == kind:
                    return part[kind]
    raise ValueError(f"example {example.get('photo_id', '?')} has no {role} {kind}")


def example_image(example: Mapping[str, Any]) -> str:
    """The image URL or path in an example's user turn; a path of a folder or demo photo (its `image_root`
    recorded) as the `LocalImage` the image loader reads."""
    location = _content_part(example, "user", "image")
    return LocalImage(location, example["image_root"]) if example.get("image_root") else location


def example_prompt(example: Mapping[str, Any]) -> str:
    return _content_part(example, "user", "text")


def example_answer(example: Mapping[str, Any]) -> str:
    """The assistant's text: the JSON the model is trained to write."""
    return _content_part(example, "assistant", "text")


def photo_from_example(example: Mapping[str, Any]) -> Photo:
    """The part of a Photo an example still holds, enough to make the example again."""
    photo = Photo(id=example["photo_id"], image_url=str(example_image(example)), ground_truth_tags=list(example["ground_truth_tags"]))
    if example.get("image_root"):  # what photo_image needs to read it again
        photo.update(source="folder", name=photo["image_url"][len(example["image_root"].rstrip("/")) + 1:])
    return photo


# ---------------------------------------------------------------- checks
def image_digest(image: Image.Image) -> str:
    """sha256 over the decoded pixels: byte-identical files and lossless re-encodings of one image agree."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode("ascii"))
    digest.update(image.tobytes())
    return digest.hexdigest()


def reason_code(reason: str) -> str:
    """"bad_image: HTTP 404 ..." -> "bad_image"."""
    return reason.split(":", 1)[0]


def validate_photo(
    photo: Photo, min_tags: int = DEFAULT_MIN_TAGS, min_side: int = DEFAULT_MIN_SIDE, max_side: int = DEFAULT_MAX_SIDE
) -> PhotoCheck:
    """Whether a photo can be a training example: enough tags, an image that decodes, a sane size.

    Tags are counted first, so a photo that fails on them costs no download. The image goes
    through `images.load_image`, the same reader training uses, with its byte limit.
    """
    n_tags = len(normalise_tags(photo.get("ground_truth_tags") or []))
    if n_tags < min_tags:
        return PhotoCheck(f"too_few_tags: {n_tags} of at least {min_tags}", None)
    location = photo.get("image_url") or ""
    if not location:
        return PhotoCheck("bad_image: the photo record has no image_url", None)
    try:
        image = load_image(photo_image(photo))
    except ImageFetchError as exc:
        return PhotoCheck(f"bad_image: {exc}", None)
    digest = image_digest(image)
    width, height = image.size
    if min(width, height) < min_side:
        return PhotoCheck(f"too_small: {width}x{height} px, the shorter side is under {min_side}", digest)
    if max(width, height) > max_side:
        return PhotoCheck(f"too_large: {width}x{height} px, the longer side is over {max_side}", digest)
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return PhotoCheck(f"bad_image: {width}x{height} px is more elongated than {MAX_ASPECT_RATIO}:1", digest)
    return PhotoCheck(None, digest)


# ---------------------------------------------------------------- split
def split_score(photo_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by the seed and the photo id alone."""
    digest = hashlib.sha256(f"{seed}:{photo_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(photo_id: str, seed: int, validation_share: float) -> str:
    """"validation" or "train": a photo's split never depends on which other photos are there."""
    return "validation" if split_score(photo_id, seed) < validation_share else "train"


# ---------------------------------------------------------------- inputs (Metaflow client runs, duck-typed)
def read_batches(update_runs: Iterable[Any], skip: Collection[str] = ()) -> list[UpdateBatch]:
    """The batches of UpdatePhotos runs (client Runs, newest first as listed), oldest first, except `skip`."""
    batches = [
        UpdateBatch(pathspec=run.pathspec, photos=dict(getattr(run.data, "unseen", None) or {}))
        for run in update_runs
        if run.pathspec not in skip
    ]
    return batches[::-1]


def held_out_ids(update_runs: Iterable[Any], evaluation_runs: Iterable[Any]) -> list[str]:
    """The leak guard's list: the newest non-empty UpdatePhotos batch plus every photo in a `models_eval`.

    `update_runs` are newest first (as `mfclient.runs_of` lists them). The newest batch is the
    one PromptModels and PromptCustomModels score next; photos in the `models_eval` of
    `evaluation_runs` (PromptCustomModels by default, see DEFAULT_HOLDOUT_FLOWS) stay held out for
    good, so the dashboard never shows a fine-tuned model graded on photos it was trained on.
    """
    held: set[str] = set()
    for run in update_runs:
        unseen = getattr(run.data, "unseen", None) or {}
        if unseen:
            held.update(unseen)
            break
    for run in evaluation_runs:
        models_eval = getattr(run.data, "models_eval", None) or {}
        held.update(models_eval.get("photos") or {})
    return sorted(held)


def previous_dataset(run: Any, settings: CurationSettings) -> tuple[Optional[Dataset], list[str]]:
    """The dataset of an earlier PrepareVLMData run (a client Run) if it can be extended, with a note why not.

    It cannot when anything in the settings' fingerprint changed (prompt, seed, split share, tag
    or size limits), or when --max-samples is below its size: the dataset is then rebuilt.
    """
    if run is None:
        return None, []
    data = run.data
    previous = Dataset(
        train_examples=list(getattr(data, "train_examples", None) or []),
        validation_examples=list(getattr(data, "validation_examples", None) or []),
        dropped=list(getattr(data, "dropped", None) or []),
        image_digests=dict(getattr(data, "image_digests", None) or {}),
        pending_photos=dict(getattr(data, "pending_photos", None) or {}),
        included_update_runs=list(getattr(data, "included_update_runs", None) or []),
        settings=dict(getattr(data, "curation_settings", None) or {}),
    )
    wanted = settings.fingerprint()
    changed = sorted(k for k in wanted if previous.settings.get(k) != wanted[k])
    if changed:
        diffs = ", ".join(f"{k} {previous.settings.get(k)!r} -> {wanted[k]!r}" for k in changed)
        return None, [f"Rebuilding: settings differ from {run.pathspec} ({diffs})."]
    size = len(previous.train_examples) + len(previous.validation_examples)
    if settings.max_samples and size > settings.max_samples:
        return None, [f"Rebuilding: --max-samples {settings.max_samples} is below the {size} examples of {run.pathspec}."]
    return previous, [f"Extending {run.pathspec} ({size} examples)."]


# ---------------------------------------------------------------- curation
def curate(
    batches: Sequence[UpdateBatch],
    held_out: Collection[str],
    settings: CurationSettings,
    previous: Optional[Dataset] = None,
    notes: Sequence[str] = (),
    workers: int = DEFAULT_WORKERS,
) -> Dataset:
    """Build the dataset from `batches` (oldest first), extending `previous` when given.

    Earlier examples stay as they are, in their split, with no image fetched again, unless now
    held out. Photos the previous run left out for a reason that may pass (`pending_photos`) are
    looked at again, before the new batches' photos. An empty dataset is a result, not an error
    (FineTuneVLM then has nothing to do); its notes say why it is empty.
    """
    held_out = set(held_out)
    previous = previous or Dataset()
    dataset = Dataset(
        dropped=[d for d in previous.dropped if d["photo_id"] not in previous.pending_photos],
        included_update_runs=list(dict.fromkeys([*previous.included_update_runs, *(b["pathspec"] for b in batches)])),
        settings=settings.fingerprint(),
        notes=list(notes),
    )

    def drop(photo_id: str, reason: str, photo: Optional[Photo] = None) -> None:
        log.debug("left out %s: %s", photo_id, reason)
        dataset.dropped.append({"photo_id": photo_id, "reason": reason})
        if photo is not None and reason_code(reason) in RETRY_REASONS:
            dataset.pending_photos[photo_id] = photo

    # earlier examples, minus those held out since
    examples: dict[str, TrainingExample] = {}
    splits: dict[str, str] = {}
    for split, group in (("train", previous.train_examples), ("validation", previous.validation_examples)):
        for example in group:
            if example["photo_id"] in held_out:
                drop(example["photo_id"], "held_out", photo_from_example(example))
            else:
                examples[example["photo_id"]] = example
                splits[example["photo_id"]] = split
    dataset.image_digests = {pid: d for pid, d in previous.image_digests.items() if pid in examples}

    # the photos to look at: cheap checks first, so a held-out photo costs no download
    candidates: list[Photo] = []
    seen = set(examples)
    corrected = 0
    for photo in [*previous.pending_photos.values(), *(p for batch in batches for p in batch["photos"].values())]:
        pid = str(photo["id"])
        base = str(photo.get("corrects") or pid)
        if base in examples and base not in held_out and _reviewed_again(photo, examples[base]):
            examples[base] = make_example({**photo, "id": base}, settings.prompt_text)  # same split, the corrected tags
            corrected += 1
        elif pid in seen:
            drop(pid, "duplicate: the same photo id was delivered before")
        elif pid in held_out:
            drop(pid, "held_out", photo)
        else:
            candidates.append(photo)
        seen.add(pid)

    new_ids = _add_checked_photos(candidates, settings, examples, dataset, drop, workers)
    for pid in new_ids:
        splits[pid] = split_of(pid, settings.seed, settings.validation_share)
    _fill_empty_split(splits, new_ids, settings)
    dataset.train_examples = [examples[pid] for pid, split in splits.items() if split == "train"]
    dataset.validation_examples = [examples[pid] for pid, split in splits.items() if split == "validation"]
    dataset.notes.append(f"{len(new_ids)} new examples out of {len(candidates)} photos considered; {len(examples) - len(new_ids)} kept from before.")
    if corrected:
        dataset.notes.append(f"{corrected} earlier examples now answer with the tags the photographer confirmed or rejected since.")
    if not examples:
        dataset.notes.append(_empty_message(dataset))
    return dataset


def _reviewed_again(photo: Photo, example: TrainingExample) -> bool:
    """A photo delivered again (UpdatePhotos' `corrected`) whose reviewed ground truth differs from its example's target."""
    reviewed = photo.get("confirmed_tags") or photo.get("rejected_tags")
    return bool(reviewed) and normalise_tags(photo.get("ground_truth_tags") or []) != list(example["ground_truth_tags"])


def _add_checked_photos(
    candidates: list[Photo],
    settings: CurationSettings,
    examples: dict[str, TrainingExample],
    dataset: Dataset,
    drop: Callable[..., None],
    workers: int,
) -> list[str]:
    """Check candidates' images in order, a chunk at a time in parallel, until --max-samples is reached.

    Adds each accepted photo's example to `examples` and its digest to `dataset.image_digests`;
    returns the accepted ids in delivery order. Photos past the cap are not fetched at all.
    """
    owner = {digest: pid for pid, digest in dataset.image_digests.items()}
    room = settings.max_samples - len(examples) if settings.max_samples else len(candidates)
    accepted: list[str] = []
    position = 0

    def check(photo: Photo) -> PhotoCheck:
        return validate_photo(photo, settings.min_tags, settings.min_side, settings.max_side)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        while position < len(candidates) and len(accepted) < room:
            chunk = candidates[position : position + max(workers, room - len(accepted))]
            position += len(chunk)
            for photo, result in zip(chunk, pool.map(check, chunk)):
                pid = str(photo["id"])
                if result.reason:
                    drop(pid, result.reason, photo)
                elif result.image_digest in owner:
                    drop(pid, f"duplicate: the same image as photo {owner[result.image_digest]}")
                elif len(accepted) >= room:
                    drop(pid, "over_max_samples", photo)
                else:
                    owner[result.image_digest] = pid
                    dataset.image_digests[pid] = result.image_digest
                    examples[pid] = make_example(photo, settings.prompt_text)
                    accepted.append(pid)
    for photo in candidates[position:]:
        drop(str(photo["id"]), "over_max_samples", photo)
    return accepted


def _fill_empty_split(splits: dict[str, str], new_ids: Sequence[str], settings: CurationSettings) -> None:
    """At least one training example, and one validation example once there are two (unless the share is 0).

    The photo moved is a new one when there is one, so earlier examples keep their split; which
    one is fixed by the split score, so a rebuild moves the same photo.
    """
    def move(source: str, target: str, pick: Callable[..., str]) -> None:
        pool = [pid for pid in new_ids if splits[pid] == source] or [pid for pid, s in splits.items() if s == source]
        splits[pick(pool, key=lambda pid: split_score(pid, settings.seed))] = target

    if settings.validation_share > 0 and len(splits) >= 2 and "validation" not in splits.values():
        move("train", "validation", min)
    if splits and "train" not in splits.values():
        move("validation", "train", max)


def _empty_message(dataset: Dataset) -> str:
    counts = Counter(reason_code(d["reason"]) for d in dataset.dropped)
    listed = ", ".join(f"{code} {n}" for code, n in counts.most_common()) or "no photos delivered"
    return (
        f"The dataset is empty: {len(dataset.dropped)} photos were left out ({listed}). Photos of the newest "
        "UpdatePhotos batch and photos a prompt flow has scored are held out for evaluation; ingest photos "
        "for training with another `python updatephotos.py run` before the next PromptModels run, "
        "or lower --min-tags if most have too few tags."
    )


# ---------------------------------------------------------------- report
def dropped_counts(dropped: Iterable[DroppedPhoto]) -> dict[str, int]:
    """Reason code -> photos, most frequent first."""
    return dict(Counter(reason_code(d["reason"]) for d in dropped).most_common())


def summary_lines(dataset: Dataset, n_held_out: int) -> list[str]:
    """What a PrepareVLMData user reads at the end of the run."""
    counts = dropped_counts(dataset.dropped)
    left_out = ", ".join(f"{code} {n}" for code, n in counts.items()) or "none"
    return [
        f"{len(dataset.train_examples)} train and {len(dataset.validation_examples)} validation examples "
        f"from {len(dataset.included_update_runs)} UpdatePhotos runs.",
        f"Left out {len(dataset.dropped)} photos ({left_out}); {n_held_out} photo ids are held out for evaluation.",
        *dataset.notes,
    ]
