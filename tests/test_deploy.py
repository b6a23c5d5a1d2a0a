"""The dependencies a pod gets: one set of pins by role (pyproject.toml), the same in every route.

requirements.txt (pip + .venv), uv.lock (--environment=uv), the Dockerfiles (images) and the @pypi
decorators (--environment=pypi, fast-bakery) all carry pyproject.toml's pins; every third-party module
that phototagger/ and the flows import is declared, and what the light flows import is in the light role.
No docker engine runs here: the Dockerfiles are checked for what they copy and install.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from phototagger import dependencies

ROOT = Path(__file__).resolve().parent.parent
LIGHT_FLOWS = ["updatephotos.py", "promptmodels.py", "prepare_vlm_data.py", "evalsflow.py"]
GPU_FLOWS = ["finetune_vlm.py", "promptcustommodels.py"]
TOOLS = ["prompter.py", "check_data.py", "diagnose_data.py", "export_tags.py"]


def canonical(name: str) -> str:
    """PEP 503 name, extras dropped: "moto[server]" -> "moto", "Pillow" -> "pillow"."""
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def requirements_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def test_requirements_txt_holds_exactly_the_pins_of_pyproject():
    declared = {canonical(k): v for k, v in {**dependencies.pins("gpu"), **dependencies.dev_pins()}.items()}
    assert requirements_pins() == declared


def test_the_light_role_has_no_cuda_stack_and_the_gpu_role_adds_it():
    light, gpu = dependencies.pins("light"), dependencies.pins("gpu")
    assert "torch" not in light and "bitsandbytes" not in light
    assert light.items() <= gpu.items() and {"torch", "transformers", "peft", "bitsandbytes"} <= set(gpu)
    assert not set(dependencies.dev_pins()) & set(gpu), "test tools never reach a pod"
    assert dependencies.python_version() == "%d.%d" % sys.version_info[:2]


def test_a_pin_that_is_not_exact_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="not an exact pin"):
        dependencies.parse_pins(["torch>=2"])
    with pytest.raises(ValueError, match="one of light, gpu"):
        dependencies.pins("cuda")


def test_uv_lock_is_the_lock_of_this_pyproject():
    """`uv lock` was run after the last change of pyproject.toml, and locks every pin at its version."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (root,) = [p for p in lock["package"] if p["name"] == project["project"]["name"]]

    def specs(entries) -> dict[str, str]:
        return {canonical(e["name"]): e["specifier"].lstrip("=") for e in entries}

    assert specs(root["metadata"]["requires-dist"]) == {canonical(k): v for k, v in dependencies.pins("light").items()}
    groups = root["metadata"]["requires-dev"]
    assert set(groups) == set(project["dependency-groups"])
    for group, lines in project["dependency-groups"].items():
        assert specs(groups[group]) == {canonical(k): v for k, v in dependencies.parse_pins(lines).items()}, group
    locked = {canonical(p["name"]): p["version"] for p in lock["package"]}
    for name, version in {**dependencies.pins("gpu"), **dependencies.dev_pins()}.items():
        assert locked[canonical(name)] == version, name
    assert all(p["source"].get("registry", "https://pypi.org/simple") == "https://pypi.org/simple" for p in lock["package"] if "registry" in p["source"])


@pytest.mark.parametrize("dockerfile, role", [("Dockerfile.cpu", "light"), ("Dockerfile.cuda", "gpu")])
def test_each_dockerfile_installs_its_role_from_the_lock(dockerfile, role):
    text = (ROOT / "docker" / dockerfile).read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert base == f"python:{dependencies.python_version()}-slim"
    for line in lines:
        if line.startswith(("COPY ", "ADD ")):
            for source in line.split()[1:-1]:
                assert (ROOT / source).is_file(), f"{dockerfile} copies {source}, which the repository lacks"
                ignored = (ROOT / ".dockerignore").read_text().splitlines()
                assert f"!{source}" in ignored, f".dockerignore keeps {source} out of the build context"
    (sync,) = [line for line in lines if "uv sync" in line]
    assert "--frozen" in sync and "--no-dev" in sync, "exactly uv.lock, never the test tools"
    assert ("--group gpu" in sync) == (role == "gpu") and ("--no-default-groups" in sync) == (role == "light")
    assert not re.search(r"pip install(?! --no-cache-dir uv==)", text), "no pin written twice: everything comes from uv.lock"


def top_level_imports(path: Path, module_level_only: bool) -> set[str]:
    """The absolute imports of a file: every one, or only those run when the module is imported."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # imports under a top-level if/try still run on import
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in ast.walk(top)]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def third_party(modules: set[str]) -> set[str]:
    local = {"phototagger", "tests", "metaflow_extensions"} | {p.stem for p in ROOT.glob("*.py")}
    return {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - local - {"__future__"}


def distributions(module: str) -> set[str]:
    return {canonical(d) for d in packages_distributions().get(module, [])}


def library_files() -> list[Path]:
    return sorted((ROOT / "phototagger").rglob("*.py")) + [ROOT / f for f in LIGHT_FLOWS + GPU_FLOWS + TOOLS]


def test_every_third_party_module_phototagger_and_the_flows_import_is_declared():
    declared = {canonical(name) for name in dependencies.pins("gpu")}
    undeclared = {}
    for path in library_files():
        for module in third_party(top_level_imports(path, module_level_only=False)):
            found = distributions(module)
            assert found, f"{path.relative_to(ROOT)} imports {module}, which no installed distribution provides"
            if not found & declared:
                undeclared[f"{path.relative_to(ROOT)}: {module}"] = sorted(found)
    assert not undeclared, f"imports missing from pyproject.toml: {undeclared}"


def module_level_closure(start: Path) -> set[str]:
    """The third-party modules importing `start` imports, following phototagger's own modules."""
    seen, todo, found = set(), [start], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        modules = top_level_imports(path, module_level_only=True)
        found |= third_party(modules)
        for module in modules:
            if module.split(".")[0] == "phototagger":
                parts = module.split(".")
                for n in range(1, len(parts) + 1):
                    base = ROOT.joinpath(*parts[:n])
                    todo += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
    return found


@pytest.mark.parametrize("flow_file", LIGHT_FLOWS + GPU_FLOWS)
def test_importing_a_flow_needs_only_the_light_role(flow_file):
    """Every flow file (also the GPU flows, whose start and end run in the light image) imports the CUDA
    stack only inside the steps that ask for a GPU."""
    light = {canonical(name) for name in dependencies.pins("light")}
    for module in module_level_closure(ROOT / flow_file):
        assert distributions(module) & light, f"importing {flow_file} imports {module}, which is not in the light role"


def pypi_decorators(flow_file: str) -> dict[str, dict]:
    """step -> the @pypi attributes Metaflow resolves for it under --environment=pypi (what fast-bakery reads)."""
    spy = (
        "import json, runpy, sys\n"
        "sys.path.insert(0, '.')\n"
        "from metaflow.plugins.pypi import pypi_decorator as d\n"
        "init = d.PyPIStepDecorator.step_init\n"
        "def step_init(self, flow, graph, step, *a, **k):\n"
        "    init(self, flow, graph, step, *a, **k)\n"
        "    print('PYPI ' + json.dumps({'step': step, **{k: self.attributes[k] for k in ('packages', 'python')}}))\n"
        "d.PyPIStepDecorator.step_init = step_init\n"
        f"sys.argv = [{flow_file!r}, '--environment=pypi', 'show']\n"
        f"runpy.run_path({flow_file!r}, run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", spy], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    found = [json.loads(line[5:]) for line in out.stdout.splitlines() if line.startswith("PYPI ")]
    return {entry["step"]: entry for entry in found}


@pytest.mark.parametrize("flow_file", ["updatephotos.py", "finetune_vlm.py"])
def test_under_the_pypi_environment_each_step_declares_its_role(flow_file, tmp_path, monkeypatch):
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(tmp_path))
    steps = pypi_decorators(flow_file)
    assert steps, "no step got @pypi"
    for step, entry in steps.items():
        role = "gpu" if (flow_file, step) == ("finetune_vlm.py", "train") else "light"
        assert entry["packages"] == dependencies.pins(role), f"{flow_file} {step}"
        assert entry["python"] == dependencies.python_version()


def test_a_run_sent_to_kubernetes_without_an_image_is_refused_before_it_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOTO_TAGGER_", "METAFLOW_KUBERNETES_CONTAINER_IMAGE"))}
    env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "updatephotos.py", "run", "--with", "kubernetes:cpu=2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode != 0
    assert "default image" in out.stderr and "PHOTO_TAGGER_IMAGE" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.glob("UpdatePhotos/*/start")), "no task started"
