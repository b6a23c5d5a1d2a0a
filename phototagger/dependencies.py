"""What each role of step needs installed, read from pyproject.toml: the one place the pins live.

Roles: "light" (every step without a GPU: pyproject's [project] dependencies) and "gpu" (the light pins
plus the CUDA stack of the "gpu" dependency group). Metaflow's `@pypi_base`/`@pypi` (for
`--environment=pypi` and fast-bakery), the Dockerfiles and the tests read the pins from here;
`--environment=uv` and the images read pyproject.toml and uv.lock themselves.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"  # shipped in the code package too
ROLES = ("light", "gpu")
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[A-Za-z0-9,._-]+\])?)==(?P<version>[^\s;]+)$")


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def parse_pins(lines: list[str]) -> dict[str, str]:
    """["torch==2.14.1", ...] -> {"torch": "2.14.1"}; anything but an exact pin is a mistake here."""
    pins = {}
    for line in lines:
        match = _PIN.match(line.strip())
        if not match:
            raise ValueError(f"{PYPROJECT.name}: {line!r} is not an exact pin (name==version): pin it so every route installs the same")
        pins[match["name"]] = match["version"]
    return pins


def pins(role: str) -> dict[str, str]:
    """name -> version a step of this role needs, in the form @pypi(packages=...) takes."""
    if role not in ROLES:
        raise ValueError(f"unknown dependency role {role!r}: one of {', '.join(ROLES)}")
    project = _project()
    light = parse_pins(project["project"]["dependencies"])
    if role == "light":
        return light
    return {**light, **parse_pins(project["dependency-groups"]["gpu"])}


def dev_pins() -> dict[str, str]:
    """The tests' and the deployment check's own pins (the "dev" group): never installed in a pod."""
    return parse_pins(_project()["dependency-groups"]["dev"])


def python_version() -> str:
    """The Python minor version the pins are locked for ("3.11"), from requires-python ">=3.11,<3.12"."""
    spec = _project()["project"]["requires-python"]
    match = re.fullmatch(r">=(\d+\.\d+),<\d+\.\d+", spec)
    if not match:
        raise ValueError(f"{PYPROJECT.name}: requires-python {spec!r} should name one minor version, like '>=3.11,<3.12'")
    return match[1]
