"""The README's own-photos recipe, run as printed, in a fresh copy of the project, as root, on a small folder.

Every ```bash block under "## Your own photos" runs unchanged through bash, in the order the README gives,
once per set-up: the blocks before the first set-up (the folder in), one set-up's block (the blocks that
run promptmodels.py: no model, a local OpenAI-compatible server, a vendor key), then the blocks after the
last one (dashboard and sidecars). The only things the test supplies are what a user's machine would:
HOME (so `~/Pictures/trip` is a folder of six photos, four keyworded in XMP sidecars as a photo tool
writes them), a fake OpenAI-compatible server on 127.0.0.1 (standing in for Ollama at localhost:11434,
and for api.openai.com through OPENAI_BASE_URL), and the `.venv` the scripts build. A block that stops
working, or a set-up that ends without a dashboard and sidecars, fails here: the README cannot rot.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from phototagger.output import xmp
from tests.fakes.openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Your own photos"
OLLAMA_URL = "http://localhost:11434/v1"
PHOTOS = {  # name -> (colour, the photographer's keywords; none for photos never keyworded)
    "beach.jpg": ((225, 205, 150), ["beach", "sea", "summer"]),
    "dunes.jpg": ((220, 200, 140), ["beach", "sand"]),
    "lake.jpg": ((40, 90, 200), ["sea", "water"]),
    "sky.jpg": ((60, 110, 210), ["sky", "water"]),
    "shore.jpg": ((215, 195, 145), []),
    "bay.jpg": ((45, 95, 205), []),
}
SIDECAR = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000, 0000/00/00-00:00:00">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
   <dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def own_photos_blocks(readme: str) -> list[str]:
    """The ```bash blocks of the README's own-photos section, in order."""
    start = readme.index(f"\n{SECTION}\n")
    end = readme.find("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", readme[start : end if end > 0 else None], re.S)


def set_ups(blocks: list[str]) -> dict[str, list[str]]:
    """Each set-up's full recipe: the common blocks before the set-ups, its own block, the common blocks after."""
    prompting = [i for i, block in enumerate(blocks) if "promptmodels.py" in block]
    assert prompting, "the own-photos section has no promptmodels.py block"
    before, after = blocks[: prompting[0]], blocks[prompting[-1] + 1 :]
    named = {}
    for i in prompting:
        name = "local server" if "openai-compatible" in blocks[i] else "vendor key" if "openai_api" in blocks[i] else "no model"
        named[name] = [*before, blocks[i], *after]
    return named


def fresh_copy(dest: Path) -> Path:
    """The project's files as a clone has them (tracked and not ignored), with the .venv the scripts build."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file() and not name.startswith(".venv"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    return dest


def photographers_folder(home: Path) -> Path:
    folder = home / "Pictures" / "trip"
    folder.mkdir(parents=True)
    for name, (rgb, keywords) in PHOTOS.items():
        Image.new("RGB", (64, 48), rgb).save(folder / name, quality=90)
        if keywords:
            items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
            (folder / f"{name}.xmp").write_text(SIDECAR.format(items=items))
    return folder


def user_env(home: Path) -> dict[str, str]:
    """A root shell in a container: no Metaflow settings, no keys, nothing the tests set for themselves."""
    drop = ("client_id", "openai_api", "togetherai_api", "OPENAI_BASE_URL", "OPENAI_COMPATIBLE_BASE_URL", "PHOTOTAGGER_CACHE_DIR",
            "PHOTOTAGGER_ALLOW_PRIVATE_URLS", "SUDO_USER", "USERNAME")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("METAFLOW_")}
    env.update(HOME=str(home), USER="root", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def run_block(block: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"README block failed (exit {done.returncode}):\n{block}\n--- output ---\n{output[-6000:]}"
    return output


def test_the_readme_offers_three_set_ups_for_your_own_photos():
    assert set(set_ups(own_photos_blocks((ROOT / "README.md").read_text()))) == {"no model", "local server", "vendor key"}


@pytest.mark.parametrize("set_up, models", [
    ("no model", ["prior:tag-prior", "knn:jec"]),
    ("local server", ["openai-compatible:qwen2.5vl:7b", "prior:tag-prior", "knn:jec"]),
    ("vendor key", ["openai:gpt-4o-mini", "prior:tag-prior", "knn:jec"]),
])
def test_the_own_photos_recipe_ends_in_a_dashboard_and_sidecars_on_the_first_try(tmp_path, set_up, models):
    clone, home = fresh_copy(tmp_path / "photo-tagger"), tmp_path / "home"
    folder = photographers_folder(home)
    env = user_env(home)
    blocks = set_ups(own_photos_blocks((clone / "README.md").read_text()))[set_up]
    with FakeOpenAIServer() as server:
        server.answer_fn = lambda request: json.dumps({"tags": ["beach", "sea", "sky"]})
        if set_up == "vendor key":
            env["OPENAI_BASE_URL"] = server.base_url  # api.openai.com, as far as this machine can tell
        outputs = []
        for block in blocks:
            if OLLAMA_URL in block:
                block = block.replace(OLLAMA_URL, server.base_url)  # the server the README tells you to start
            outputs.append(run_block(block, clone, env))
        calls = len(server.requests)

    assert calls == (len(PHOTOS) if set_up != "no model" else 0), "every photo went to the model once"
    html = (clone / "dashboard.html").read_text()
    for model in models:
        assert f'data-model="{model}' in html, f"{model} has no row on the dashboard"
    assert "4 photos took their ground truth from their own keywords" in outputs[0]
    for name, (_, keywords) in PHOTOS.items():
        sidecar = folder / f"{name}.xmp"
        assert sidecar.is_file(), f"no sidecar for {name}"
        subjects = xmp.read_keywords(sidecar).get("dc:subject", [])
        assert set(keywords) <= set(subjects), f"{name}: the photographer's keywords were dropped: {subjects}"
        if not keywords:
            assert subjects, f"{name} has no keyword of its own and got none from the model"
    assert (clone / "exports" / "tags.csv").is_file()


def printed_command(output: str, label: str) -> str:
    """The command a flow printed after `label` (e.g. "Next:"), without Metaflow's log prefix."""
    lines = [line.split(")] ", 1)[-1] for line in output.splitlines()]
    found = [line for line in lines if label in line]
    assert found, f"nothing printed after {label!r}:\n{output[-3000:]}"
    command = found[-1].split(label, 1)[1].strip().strip("`").rstrip(".")
    return command


def test_as_root_from_another_directory_the_flows_share_one_datastore_and_their_printed_commands_work(tmp_path):
    clone, home, elsewhere = fresh_copy(tmp_path / "photo-tagger"), tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    env = user_env(home)
    python, flow = str(clone / ".venv" / "bin" / "python"), lambda name: str(clone / name)

    run_block(f"{python} {flow('updatephotos.py')} run --source demo --batch-size 4", clone, env)
    prompted = run_block(f"{python} {flow('promptmodels.py')} run --models prior,knn", elsewhere, env)
    assert "Prompted 2 of 2 models on 4 photos" in prompted, "the run from elsewhere found the batch ingested in the project"
    next_command = printed_command(prompted, "Next:")
    assert next_command == f"{python} {flow('evalsflow.py')} run"
    evaluated = run_block(next_command, elsewhere, env)
    dashboard = printed_command(evaluated, "Dashboard:")
    run_block(dashboard, elsewhere, env)
    assert "knn:jec" in (elsewhere / shlex.split(dashboard)[-1]).read_text()
    assert not (elsewhere / ".metaflow").exists() and (clone / ".metaflow" / "EvaluationFlow").is_dir()


def test_run_demo_started_from_another_directory_as_root_prints_commands_that_work_there(tmp_path):
    """./run_demo.sh as a new user runs it: as root, from their home; then every command it prints at its end
    (but `card server`, which serves until stopped) is run as printed, from that same directory."""
    clone, home = fresh_copy(tmp_path / "photo-tagger"), tmp_path / "home"
    home.mkdir()
    stamp = Path(sys.prefix) / ".requirements.sha256"
    if not stamp.is_file() or stamp.read_text().split()[0] != subprocess.run(
            ["sha256sum", str(clone / "requirements.txt")], capture_output=True, text=True).stdout.split()[0]:
        pytest.skip("this venv was not built from this requirements.txt: run_demo.sh would rebuild it")
    output = run_block(str(clone / "run_demo.sh"), home, user_env(home))
    printed = [line.strip() for line in output.splitlines()[output.splitlines().index(next(
        line for line in output.splitlines() if line.startswith("== Done."))):] if ".venv/bin/python" in line]
    commands = [line.split(": ", 1)[-1] for line in printed if "card server" not in line]
    assert len(commands) == 2 and all(c.startswith(f"cd {clone} && ") for c in commands), printed
    (clone / "dashboard.html").unlink()
    for command in commands:
        run_block(command, home, user_env(home))
    assert "Photo Tagger demo" in (clone / "dashboard.html").read_text()
