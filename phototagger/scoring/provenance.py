"""Whose keyword is it: the photographer's, a model's suggestion still waiting for review, or a reviewed one.

Every keyword export_tags.py writes is a suggestion. It goes out twice:
- filed under the `AI` keyword (`AI|cat` in lr:hierarchicalSubject, `AI/cat` in digiKam:TagsList,
  plain `cat` in dc:subject, as Lightroom and digiKam write a keyword below a parent), unless the user
  turns the hierarchy off;
- listed in the sidecar's Photo Tagger namespace (`phototagger:Suggestions`, one item per tag with the
  model and the run that suggested it), which photo tools keep as they keep any namespace they do not know.

The review gesture, one that Lightroom Classic and digiKam can both do (docs/own-library.md):
- confirm: the photo carries the keyword outside the `AI` hierarchy (add `cat` from the keyword list,
  or drag `AI › cat` to the top level to confirm it on every photo at once);
- reject: the photo no longer carries the keyword at all (untick `AI › cat`, or delete that keyword);
- leave it under `AI`: still the model's, never ground truth.

`classify` applies these rules to the keywords of every place a photo keeps them (XMP sidecars, the XMP
inside the image, IPTC Keywords) at once, so a suggestion a tool copied into another place (Lightroom
writes dc:subject into IPTC Keywords) stays the model's there too.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from phototagger.scoring.tags import normalise_tag

AI_ROOT = "AI"  # the keyword suggestions are filed under by default
TOOL_PATHS = ("darktable",)  # roots of the paths a tool files its own state under: not keywords


@dataclass(frozen=True)
class KeywordValue:
    """One value of a keyword field as written, with its path separator (None: a flat field) and origin."""

    value: str
    separator: Optional[str]
    origin: str  # "xmp-sidecar:lr:hierarchicalSubject", "iptc:keywords", ...


@dataclass
class Review:
    """What a photo's keywords say once suggestions are set apart (all tags normalised but `own`)."""

    own: list[tuple[str, str]] = field(default_factory=list)  # (keyword as written, origin): ground truth
    confirmed: list[str] = field(default_factory=list)  # suggestions the photographer made their own
    pending: list[str] = field(default_factory=list)  # suggestions not reviewed yet: still the model's
    rejected: list[str] = field(default_factory=list)  # suggestions the photographer removed


def root_levels(root: str) -> tuple[str, ...]:
    """The normalised levels of a hierarchy root written with "/" ("AI/Photo Tagger")."""
    return tuple(normalise_tag(level) for level in root.split("/") if normalise_tag(level))


def classify(values: Iterable[KeywordValue], suggested: Iterable[str], roots: Iterable[str] = (AI_ROOT,)) -> Review:
    """Sort a photo's keyword values into the photographer's own and the model's suggestions.

    `suggested` are the tags the Photo Tagger namespace lists; `roots` the hierarchies suggestions were
    filed under. A path under a root is a suggestion whatever the namespace says (a tool may have dropped
    the namespace); a flat value (dc:subject, IPTC) is a suggestion when it is one of the suggested tags
    or a level of a suggestion's path, unless a path outside the roots gives the photo that keyword too.
    A suggested tag the photo carries nowhere any more was rejected.
    """
    levels_of_roots = [root_levels(root) for root in roots]
    levels_of_roots = [levels for levels in levels_of_roots if levels]
    values = list(values)
    suggested_keys = {normalise_tag(tag) for tag in suggested} - {""}
    ai_levels: set[str] = set()  # every level of a path filed under a root
    own_levels: set[str] = set()  # every level of a path outside the roots
    own_paths: dict[int, str] = {}  # index in `values` -> the leaf of a path outside the roots
    for index, kv in enumerate(values):
        if kv.separator is None:
            continue
        levels = [level.strip() for level in kv.value.split(kv.separator) if level.strip()]
        keys = [normalise_tag(level) for level in levels]
        if not levels or (len(levels) > 1 and levels[0] in TOOL_PATHS):
            continue
        root = next((r for r in levels_of_roots if tuple(keys[: len(r)]) == r), None)
        if root is not None:
            ai_levels.update(keys[len(root):])
        else:
            own_levels.update(keys)
            own_paths[index] = levels[-1]
    held_back = (ai_levels | suggested_keys) - own_levels
    root_names = {level for levels in levels_of_roots for level in levels}
    present = ai_levels | own_levels
    own: list[tuple[str, str]] = []
    for index, kv in enumerate(values):
        if kv.separator is not None:
            if index in own_paths:
                own.append((own_paths[index], kv.origin))
            continue
        key = normalise_tag(kv.value)
        present.add(key)
        if key and key not in held_back and key not in root_names:
            own.append((kv.value, kv.origin))
    own_keys = {normalise_tag(keyword) for keyword, _ in own}
    return Review(
        own=own,
        confirmed=sorted(suggested_keys & own_keys),
        pending=sorted((present & (suggested_keys | ai_levels)) - own_keys),
        rejected=sorted(suggested_keys - present),
    )


def leaf_keys(tags: Sequence[str | Sequence[str]]) -> list[str]:
    """The normalised tag each export tag stands for (a path's last level)."""
    return [normalise_tag(tag if isinstance(tag, str) else tag[-1]) for tag in tags if tag]


def review_key(confirmed: Iterable[str], rejected: Iterable[str]) -> str:
    """A short fingerprint of how a photo's suggestions were reviewed; "" when none was confirmed or rejected.

    UpdatePhotos delivers a photo again when this changes, so the corrected ground truth reaches the scores."""
    confirmed, rejected = sorted(set(confirmed)), sorted(set(rejected))
    if not confirmed and not rejected:
        return ""
    return hashlib.sha256(json.dumps([confirmed, rejected]).encode()).hexdigest()[:16]
