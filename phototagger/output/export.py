"""Tags out: one model's tags for a batch or a folder, as XMP sidecars, CSV and JSONL.

The model is the best one on the latest EvaluationFlow dashboard of the branch unless one is named.
Its tags come either from the latest PromptModels/PromptCustomModels run that prompted it (or a
run named by pathspec), or from prompting it now on a folder of the user's own photos. A photo
whose result is an error is reported and left out of every output: an empty keyword list would
read as "the model saw nothing here".

Where sidecars go: next to the image for the user's own files (photos of the folder source whose
file is on this machine; named by `xmp.sidecar_path`); for everything else (image URLs, the demo's
package images, a path this machine does not have) into the output folder as `<photo id>.xmp`.
CSV and JSONL go into the output folder unless given their own paths.

Every keyword goes out as a suggestion (provenance.py): filed under `AI` in the keyword paths
(`ExportOptions.tag_prefix`; "" writes them flat) and listed with the model and the run in the sidecar's
Photo Tagger namespace. A tag the photo already has as its own keyword, or one the photographer deleted
after an earlier export (the photo's `rejected_tags`, or what its sidecar says now), is never suggested again.
Photos are named by their path inside the folder (`Photo["name"]`) in the CSV, the JSONL and the report.

With a vocabulary (vocabulary.json, the lenient matching rule's) every output gets the tags in the
form that rule scores: synonyms and inflections folded ("motorbikes" -> "motorcycle"), stop-tags
("photo", "hd wallpapers") left out, and in the sidecars each tag filed under its parents
("vehicle|motorcycle", "vehicle/motorcycle").
"""
from __future__ import annotations

import csv
import heapq
import json
import logging
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from phototagger import mfclient
from phototagger.errors import UserError
from phototagger.scoring import provenance
from phototagger.output import xmp
from phototagger.prompting.batch import DEFAULT_CONCURRENCY, PromptSettings, prompt_photos
from phototagger.prompting.cache import make_cache
from phototagger.prompting.configs import ModelSkipped, make_prompter, select_models
from phototagger.prompting.variants import DEFAULT_VARIANT
from phototagger.scoring.evals import RowKey, model_key
from phototagger.scoring.ranking import Ranking
from phototagger.scoring.tags import normalise_tag
from phototagger.scoring.vocabulary import Vocabulary
from phototagger.http import is_url
from phototagger.records import ModelResult, Photo, photo_name
from phototagger.ingest.sources import resolve_source
from phototagger.ingest.sources.keywords import read_photo_keywords
from phototagger.ingest.state import reference_photos

log = logging.getLogger(__name__)

DASHBOARD_FLOW = mfclient.EVAL_FLOW
PROMPT_FLOWS = mfclient.PROMPT_FLOWS
UPDATE_FLOW = mfclient.UPDATE_FLOW
FINETUNED_PROVIDER = "finetuned"  # needs a FineTuneVLM adapter and a GPU: only PromptCustomModels prompts it
FOLDER_SOURCE = "folder"  # Photo["source"] of the user's own files, the only ones that get sidecars beside them
CSV_FIELDS = ("photo", "image", "tags", "model", "photo_id")
CSV_TAG_SEPARATOR = ";"


class ExportError(UserError):
    """The export cannot start: no dashboard, no run with the model, a bad model key. Says the fix."""


@dataclass
class TaggedPhoto:
    photo_id: str
    image: str  # the photo's image_url: a local path or an http(s) URL
    tags: list[str]
    source: str = ""  # the Photo's source ("folder", "unsplash", "demo", ...)
    name: str = ""  # what the user calls it: its path inside the folder; "" means the id
    rejected: list[str] = field(default_factory=list)  # suggestions the photographer deleted when it was ingested

    @property
    def label(self) -> str:
        return self.name or self.photo_id


@dataclass
class SkippedPhoto:
    photo_id: str
    image: str
    reason: str  # the error class of the model's result, or why its sidecar was not written
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.photo_id


@dataclass
class TagSet:
    """What one model said about a set of photos, errors set apart."""

    model: str  # "provider:model"
    source: str  # "PromptModels/1234" or "folder:/abs/path"
    tagged: list[TaggedPhoto]
    skipped: list[SkippedPhoto] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the photo source had to say (unreadable files)


@dataclass
class ExportOptions:
    out_dir: Path = Path("exports")
    xmp_naming: str = "fullname"
    csv_path: Optional[Path] = None  # default: <out_dir>/tags.csv
    jsonl_path: Optional[Path] = None  # default: <out_dir>/tags.jsonl
    write_xmp: bool = True
    tag_prefix: str = provenance.AI_ROOT  # the keyword suggestions are filed under ("AI|cat"); "": flat
    dry_run: bool = False
    vocabulary: Optional[Vocabulary] = None  # None: the tags as the model gave them, flat


@dataclass
class ExportReport:
    sidecars: list[xmp.SidecarChange] = field(default_factory=list)
    sidecar_failures: list[SkippedPhoto] = field(default_factory=list)
    csv_path: Optional[Path] = None
    jsonl_path: Optional[Path] = None
    dry_run: bool = False
    tag_prefix: str = ""  # where the suggestions were filed in the keyword paths


def options_prefix(report: ExportReport) -> bool:
    return bool(report.tag_prefix.strip("/ "))


# -- which model ----------------------------------------------------------------------------------


def split_model_key(key: str) -> tuple[str, str]:
    """("openai", "gpt-4o-mini") from "openai:gpt-4o-mini"; a model name may hold more colons."""
    provider, _, model = key.partition(":")
    if not provider or not model:
        raise ExportError(f"Model {key!r} is not a model key: use provider:model, e.g. openai:gpt-4o-mini or knn:jec")
    return provider, model


def choose_model(requested: Optional[str], ranking: Optional[Ranking], branch: str) -> str:
    """The model named with --model, else the top row of the dashboard's ranking."""
    if requested:
        split_model_key(requested)
        return requested
    if ranking is None:
        raise ExportError(
            f"No EvaluationFlow run on branch {branch} yet, so there is no best model to pick: run "
            f"`{mfclient.flow_command(DASHBOARD_FLOW, branch)}` (after promptmodels.py), or name one with --model provider:model"
        )
    if ranking.best is None:
        raise ExportError(
            f"The dashboard of branch {branch} ranks no model with a recall yet: run promptmodels.py and "
            "evalsflow.py on photos with tags, or name one with --model provider:model"
        )
    return str(ranking.best.key)


def dashboard_ranking(branch: str) -> Optional[Ranking]:
    """The model ranking of the latest successful EvaluationFlow run of `branch` (its `evals` table), None without one."""
    run = mfclient.latest_successful_run(DASHBOARD_FLOW, branch)
    if run is None:
        return None
    data = run.data  # a client Run lists its artifacts anew on every `.data`
    return Ranking.from_table(data.evals) if "evals" in data else None


def dashboard_models(ranking: Optional[Ranking]) -> list[str]:
    return [str(row.key) for row in ranking.rows] if ranking is not None else []


# -- tags from a prompt run -----------------------------------------------------------------------


def tags_from_models_eval(models_eval: Mapping[str, Any], model: str, source: str) -> TagSet:
    """The model's tags per photo from a prompt flow's `models_eval` artifact."""
    results = models_eval.get("results") or {}
    key = result_key(results, model)
    if key is None:
        available = ", ".join(sorted(results)) or "none"
        raise ExportError(f"{source} holds no results of {model}; models it holds: {available}. Pick one with --model")
    return tagset_from_results(models_eval.get("photos") or {}, results[key], key, source)


def result_key(results: Mapping[str, Any], model: str) -> Optional[str]:
    """The row of `results` that `model` names: a row key ("knn:jec | default@3f2a1c") as it is; a bare model key,
    its one row, or its row on the default prompt when it ran on several; None when it names none."""
    if model in results:
        return model
    rows = [key for key in results if RowKey.parse(key).model == model]
    default = [key for key in rows if RowKey.parse(key).variant.startswith(f"{DEFAULT_VARIANT}@")]
    return rows[0] if len(rows) == 1 else (default[0] if len(default) == 1 else None)


def tagset_from_results(photos: Mapping[str, Photo], results: Iterable[ModelResult], model: str, source: str) -> TagSet:
    """Sort results into tagged photos and skipped ones (an errored result is never an empty tag list)."""
    tagset = TagSet(model=model, source=source, tagged=[])
    for result in results:
        photo_id = str(result.get("photo_id", ""))
        photo = photos.get(photo_id) or {}
        image = photo.get("image_url", "")
        name = photo_name(photo) if photo else ""
        if result.get("error"):
            tagset.skipped.append(SkippedPhoto(photo_id, image, f"model error: {result['error']}", name))
        else:
            tagset.tagged.append(TaggedPhoto(photo_id, image, list(result.get("tags") or []), photo.get("source", ""), name,
                                             list(photo.get("rejected_tags") or [])))
    return tagset


def prompt_runs(branch: str) -> Iterator[Any]:
    """Successful PromptModels and PromptCustomModels runs of `branch`, newest first."""
    streams = [mfclient.runs_of(flow, branch) for flow in PROMPT_FLOWS]
    return heapq.merge(*streams, key=lambda run: run.created_at, reverse=True)


def models_eval_of(run: Any) -> Optional[Mapping[str, Any]]:
    data = run.data  # a client Run lists its artifacts anew on every `.data`
    return data.models_eval if "models_eval" in data else None


def latest_run_with_model(runs: Iterable[Any], model: str) -> tuple[Optional[Any], set[str]]:
    """The first of `runs` whose `models_eval` holds `model`, and the models seen on the way."""
    run, _, seen = _first_models_eval_with(runs, model)
    return run, seen


def _first_models_eval_with(runs: Iterable[Any], model: str) -> tuple[Optional[Any], Optional[Mapping[str, Any]], set[str]]:
    """`latest_run_with_model` plus the `models_eval` it read, so the caller does not load it again."""
    seen: set[str] = set()
    for run in runs:
        models_eval = models_eval_of(run)
        held = set((models_eval or {}).get("results") or {})
        if result_key(dict.fromkeys(held), model) is not None:
            return run, models_eval, seen | held
        log.info("%s holds no results of %s; looking at older runs", run.pathspec, model)
        seen |= held
    return None, None, seen


def resolve_prompt_run(pathspec: str, branch: str) -> Any:
    """The run `--run` names: `PromptModels/123`, `PromptCustomModels/45`, or a bare id of either."""
    flow, _, run_id = pathspec.rpartition("/")
    if flow and flow not in PROMPT_FLOWS:
        raise ExportError(f"--run {pathspec}: tags come from {' or '.join(PROMPT_FLOWS)} runs, not {flow}")
    from metaflow.exception import MetaflowNotFound

    found = []
    for name in [flow] if flow else PROMPT_FLOWS:
        try:
            found.append(mfclient.resolve_run(name, branch, f"{name}/{run_id}"))
        except MetaflowNotFound:
            continue
        except UserError as exc:
            raise ExportError(f"--run {pathspec}: {exc.one_line()}") from None
    if not found:
        raise ExportError(f"--run {pathspec}: no such run of {' or '.join([flow] if flow else PROMPT_FLOWS)}; pass the pathspec of a successful run, e.g. PromptModels/1712345678")
    if len(found) > 1:
        raise ExportError(f"--run {pathspec} names a run of both prompt flows: write PromptModels/{run_id} or PromptCustomModels/{run_id}")
    return found[0]


def tags_from_runs(model: str, branch: str, pathspec: str = "", listed: Sequence[str] = ()) -> TagSet:
    """The model's tags from the run `pathspec` names, else from the latest prompt run of `branch` holding it.

    `listed` are models to name in the error when none is found (e.g. the dashboard's).
    """
    if pathspec:
        run = resolve_prompt_run(pathspec, branch)
        models_eval = models_eval_of(run)
        if models_eval is None:
            raise ExportError(f"{run.pathspec} has no models_eval artifact: pick a run that finished prompting")
        return tags_from_models_eval(models_eval, model, run.pathspec)
    run, models_eval, seen = _first_models_eval_with(prompt_runs(branch), model)
    if run is None:
        available = ", ".join(sorted(seen | set(listed))) or "none yet"
        raise ExportError(
            f"No successful {' or '.join(PROMPT_FLOWS)} run on branch {branch} holds {model}. Models available: "
            f"{available}. Pick one with --model, run `{mfclient.flow_command(mfclient.PROMPT_FLOW, branch)}` with it, or tag a folder with --folder"
        )
    return tags_from_models_eval(models_eval, model, run.pathspec)


# -- tags for a folder, by prompting the model now --------------------------------------------------


def model_entry(model: str, models_config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The models.json entry for `model` (options such as base_url), or a bare one built from the key."""
    provider, name = split_model_key(model)
    for entry in select_models(models_config or {}):
        if model_key(entry["provider"], entry["model"]) == model:
            return entry
    return {"provider": provider, "model": name}


def history_photos(branch: str) -> list[Photo]:
    """What the offline baselines learn from on `branch`: UpdatePhotos' bounded sample of earlier photos and its newest batch."""
    run = mfclient.latest_successful_run(UPDATE_FLOW, branch)
    if run is None:
        return []
    data = run.data
    return [*reference_photos(mfclient.DatastoreBlobs(UPDATE_FLOW), data.reference), *dict(data.unseen).values()]


def tags_from_folder(
    folder: str,
    model: str,
    prompt_text: str,
    *,
    models_config: Optional[Mapping[str, Any]] = None,
    history: Sequence[Photo] = (),
    concurrency: Optional[int] = None,
    use_cache: bool = True,
    progress: bool = True,
) -> TagSet:
    """Prompt `model` (a model key, or a dashboard row whose prompt variant `prompt_text` replaces) on every image
    under `folder` (the folder source's listing and ids) and keep its tags."""
    model = RowKey.parse(model).model
    provider, _ = split_model_key(model)
    if provider == FINETUNED_PROVIDER:
        raise ExportError(
            f"{model} runs on a GPU with its adapter inside PromptCustomModels, not here: ingest the folder with "
            f"`{mfclient.script_command('updatephotos.py', 'run', '--source', f'folder:{folder}')}`, run "
            f"`{mfclient.script_command('promptcustommodels.py', 'run')}`, then `{mfclient.script_command('export_tags.py')}` "
            "(it reads that run); or tag the folder now with another model via --model"
        )
    source = resolve_source(f"folder:{folder}")
    photos = source.fetch(set(), sys.maxsize)
    if not photos:
        raise ExportError(f"No images found under {folder} (looked for .jpg, .jpeg, .png, .webp, .tif, .tiff)")
    entry = model_entry(model, models_config)
    try:
        prompter = make_prompter(entry, list(history))
    except ModelSkipped as exc:
        raise ExportError(f"{model} cannot tag {folder} here: {exc}") from None
    settings = PromptSettings(concurrency=concurrency or entry.get("concurrency") or DEFAULT_CONCURRENCY, progress=progress)
    results = prompt_photos(prompter, photos, prompt_text, settings, cache=make_cache(use_cache))
    tagset = tagset_from_results({p["id"]: p for p in photos}, results, model, source.name)
    tagset.notes = list(source.notes)
    return tagset


# -- writing --------------------------------------------------------------------------------------


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def with_vocabulary(tagset: TagSet, vocabulary: Vocabulary) -> TagSet:
    """`tagset` with each photo's tags in the vocabulary's canonical form, stop-tags left out."""
    tagged = [replace(photo, tags=vocabulary.canonical_tags(photo.tags)) for photo in tagset.tagged]
    return replace(tagset, tagged=tagged)


def beside_image(photo: TaggedPhoto) -> bool:
    """Whether the photo is the user's own file on this machine (folder source), whose sidecar goes beside it."""
    return photo.source == FOLDER_SOURCE and bool(photo.image) and not is_url(photo.image) and Path(photo.image).is_file()


def sidecar_for(photo: TaggedPhoto, options: ExportOptions) -> Path:
    """Next to the user's own image file (folder source); else `<out_dir>/<photo id>.xmp`."""
    if beside_image(photo):
        return xmp.sidecar_path(photo.image, options.xmp_naming)
    return options.out_dir / f"{_UNSAFE.sub('_', photo.photo_id) or 'photo'}.xmp"


def not_to_suggest(photo: TaggedPhoto) -> set[str]:
    """Tags the photo must not be offered again: its own keywords, confirmed or not, suggestions waiting for review
    (filed again elsewhere they would read as confirmed) and rejected ones (as ingested, and as its metadata says
    now: the user may have reviewed since)."""
    keys = set(photo.rejected)
    if beside_image(photo):
        try:
            now = read_photo_keywords(Path(photo.image))
        except OSError:
            return keys
        keys |= {normalise_tag(keyword) for keyword, _ in now.keywords} | set(now.pending) | set(now.rejected)
    return keys


def write_sidecars(tagset: TagSet, options: ExportOptions) -> tuple[list[xmp.SidecarChange], list[SkippedPhoto]]:
    """Merge each photo's tags into its sidecar; a sidecar that cannot be merged is reported, never clobbered."""
    changes, failures = [], []
    claimed: dict[Path, str] = {}
    suggested_by = xmp.Suggestion("", RowKey.parse(tagset.model).model, tagset.source)
    for photo in tagset.tagged:
        if not photo.tags:
            continue
        path = sidecar_for(photo, options)
        if path in claimed:
            failures.append(SkippedPhoto(photo.photo_id, photo.image, f"shares {path} with photo {claimed[path]}: use --xmp-naming fullname", photo.name))
            continue
        claimed[path] = photo.label
        try:
            skip = not_to_suggest(photo)
            tags = [tag for tag in photo.tags if normalise_tag(tag) not in skip]
            tags = [options.vocabulary.path(tag) for tag in tags] if options.vocabulary else tags
            change = xmp.write_sidecar(path, tags, options.tag_prefix, dry_run=options.dry_run, suggested_by=suggested_by)
        except (xmp.XmpError, OSError) as exc:
            failures.append(SkippedPhoto(photo.photo_id, photo.image, str(exc), photo.name))
            continue
        log.info("%s: %s", path, {name: len(values) for name, values in change.added.items()} if change.changed else "up to date")
        changes.append(change)
    return changes, failures


def write_csv(path: Path, tagset: TagSet) -> None:
    """photo (its path inside the folder, else its id), image, tags joined with ';', model, photo_id: one row per tagged photo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for photo in tagset.tagged:
            writer.writerow([photo.label, photo.image, CSV_TAG_SEPARATOR.join(photo.tags), tagset.model, photo.photo_id])


def write_jsonl(path: Path, tagset: TagSet) -> None:
    """One JSON object per tagged photo: photo (its name), photo_id, image, tags, model, source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for photo in tagset.tagged:
            record = {"photo": photo.label, "photo_id": photo.photo_id, "image": photo.image, "tags": photo.tags, "model": tagset.model, "source": tagset.source}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def export(tagset: TagSet, options: ExportOptions) -> ExportReport:
    """Write the sidecars, the CSV and the JSONL for `tagset` (nothing is written in a dry run)."""
    report = ExportReport(dry_run=options.dry_run, tag_prefix=options.tag_prefix)
    if options.write_xmp:
        report.sidecars, report.sidecar_failures = write_sidecars(tagset, options)
    report.csv_path = options.csv_path or options.out_dir / "tags.csv"
    report.jsonl_path = options.jsonl_path or options.out_dir / "tags.jsonl"
    if not options.dry_run:
        write_csv(report.csv_path, tagset)
        write_jsonl(report.jsonl_path, tagset)
    return report


def report_lines(tagset: TagSet, report: ExportReport) -> list[str]:
    """What a user reads after an export: counts, where things went, and every photo left out and why."""
    would = "would be " if report.dry_run else ""
    created = sum(1 for c in report.sidecars if c.created and c.changed)
    updated = sum(1 for c in report.sidecars if not c.created and c.changed)
    unchanged = sum(1 for c in report.sidecars if not c.changed)
    untagged = sum(1 for photo in tagset.tagged if not photo.tags)
    lines = [*tagset.notes, f"{tagset.model} tags for {len(tagset.tagged)} photos from {tagset.source}; {len(tagset.skipped)} skipped."]
    if untagged:
        lines.append(f"{untagged} photos got an empty tag list: they have CSV/JSONL rows but no sidecar.")
    if report.sidecars or report.sidecar_failures:
        lines.append(f"XMP sidecars: {created} {would}created, {updated} {would}updated, {unchanged} already up to date, {len(report.sidecar_failures)} not written.")
    if report.sidecars and options_prefix(report):
        lines.append(f"Suggestions are filed under the keyword {report.tag_prefix.replace('/', ' > ')}: review them in Lightroom or digiKam "
                     "(keep one outside it to confirm it, delete it to reject it; docs/own-library.md), then run updatephotos.py again.")
    lines.append(f"CSV: {report.csv_path} {'(dry run: not written)' if report.dry_run else ''}".rstrip())
    lines.append(f"JSONL: {report.jsonl_path} {'(dry run: not written)' if report.dry_run else ''}".rstrip())
    for skipped in tagset.skipped:
        lines.append(f"  skipped {skipped.label} ({skipped.image or 'no image'}): {skipped.reason}")
    for failed in report.sidecar_failures:
        lines.append(f"  no sidecar for {failed.label} ({failed.image or 'no image'}), its tags are in the CSV/JSONL: {failed.reason}")
    return lines
