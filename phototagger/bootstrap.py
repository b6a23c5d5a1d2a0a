"""What a flow or tool needs in its environment before Metaflow reads its configuration, set only where unset.

`phototagger/__init__.py` applies it, so every flow file and tool gets it by importing `phototagger`
first (they do, before `metaflow`: Metaflow reads its configuration once, on import):
- a user name: Metaflow refuses root and an unset user ("Unknown user"), which is how containers and CI
  run, so METAFLOW_USER becomes `photo-tagger` there (the name ./run_demo.sh and ./run_tests.sh use);
- one local datastore: Metaflow takes the `.metaflow` folder nearest the working directory, so a flow run
  from another directory made a second, empty datastore; METAFLOW_DATASTORE_SYSROOT_LOCAL defaults to the
  project folder, and METAFLOW_CARD_LOCALROOT to the cards folder beside it (Metaflow does not put cards
  beside METAFLOW_DATASTORE_SYSROOT_LOCAL by itself).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, MutableMapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_USER = "photo-tagger"


def defaults(environ: Mapping[str, str], project_root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The variables to add to `environ`: none that it sets already."""
    added: dict[str, str] = {}
    if not _metaflow_user(environ):
        added["METAFLOW_USER"] = DEFAULT_USER
    sysroot = environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL") or str(project_root)
    if not environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL"):
        added["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = sysroot
    if not environ.get("METAFLOW_CARD_LOCALROOT"):
        added["METAFLOW_CARD_LOCALROOT"] = str(Path(sysroot) / ".metaflow" / "mf.cards")
    return added


def _metaflow_user(environ: Mapping[str, str]) -> str:
    """The user Metaflow would read (metaflow.util.get_username): METAFLOW_USER, SUDO_USER, USERNAME, USER, never root."""
    for name in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER"):
        value = environ.get(name) or ""
        if value and value != "root":
            return value
    return ""


def apply(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the defaults in `environ` (the process's, inherited by every task Metaflow starts); return them."""
    added = defaults(environ)
    environ.update(added)
    return added
