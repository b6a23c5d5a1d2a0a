"""Where photos and their ground-truth tags come from, chosen by a spec string (`--source`).

    auto                          unsplash when client_id is set, else demo
    unsplash                      the latest Unsplash photos (needs client_id)
    unsplash:search:QUERY         Unsplash search results for QUERY
    unsplash:collection:ID        the photos of an Unsplash collection
    folder:PATH                   images in a folder with tags.json / tags.csv / sidecars
    unsplash-lite:PATH[?OPTIONS]  the Unsplash Lite dataset; OPTIONS: min_confidence=50&user_only=1
    demo                          the built-in offline set (photos shipped with scikit-image)
"""
from __future__ import annotations

import os
from typing import Mapping

from phototagger.errors import UserError
from phototagger.ingest.sources.base import Source, SourceError
from phototagger.ingest.sources.demo import DemoSource
from phototagger.ingest.sources.folder import FolderSource
from phototagger.ingest.sources.unsplash import KEY_ENV, UnsplashSource
from phototagger.ingest.sources.unsplash_lite import UnsplashLiteSource, parse_options

__all__ = ["Source", "SourceError", "SPECS", "checked_spec", "resolve_source"]

SPECS = (
    "auto",
    "unsplash",
    "unsplash:search:QUERY",
    "unsplash:collection:ID",
    "folder:PATH",
    "unsplash-lite:PATH[?min_confidence=N&user_only=1]",
    "demo",
)


def resolve_source(spec: str, env: Mapping[str, str] = os.environ) -> Source:
    """The Source a `--source` value names; keys and base URLs come from `env`."""
    spec = (spec or "auto").strip()
    kind, _, rest = spec.partition(":")
    if kind == "auto":
        return resolve_source("unsplash" if env.get(KEY_ENV) else "demo", env)
    if kind == "demo" and not rest:
        return DemoSource()
    if kind == "unsplash":
        mode, _, value = rest.partition(":")
        return UnsplashSource(env.get(KEY_ENV, ""), mode or "latest", value, base_url=env.get("UNSPLASH_API_URL"))
    if kind in ("folder", "unsplash-lite") and not rest.strip():
        raise UserError(f"{spec!r} names no folder", f"pass --source {kind}:/path/to/photos")
    if kind == "folder":
        return FolderSource(rest)
    if kind == "unsplash-lite":
        path, _, query = rest.partition("?")
        return UnsplashLiteSource(path, **parse_options(query))
    raise UserError(f"unknown source {spec!r}", f"use one of: {', '.join(SPECS)}")


def checked_spec(spec: str) -> str:
    """`spec` as given, once it names a source that can be built here (known kind, folder there, key set)."""
    resolve_source(spec)
    return spec
