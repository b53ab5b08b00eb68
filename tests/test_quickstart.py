"""The newcomer path: README's quick-start commands, taken from README.md itself and run in order in an empty
folder (as a new user would after installing), on tiny settings so the whole path takes well under a minute.
A command renamed, an output folder moved or a step that no longer works on a fresh folder fails here."""
from __future__ import annotations

import configparser
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parent.parent

# Appended to every `ad-train` line: tiny generated images, few of them, a few steps. Every test image is kept
# (AUROC needs both classes) and 3 normals are held out for the threshold.
TINY = ["trainer=smoke", "trainer.limit_train=null", "trainer.limit_val=null", "trainer.limit_test=null",
        "dataset.image_size=64", "dataset.generated_size=64", "dataset.num_train=12", "dataset.num_test_good=3",
        "dataset.num_test_defect=1", "dataset.val_fraction=0.25", "trainer.progress_bar=false",
        "logger.log_images=false", "logger.log_histograms=false", "logger.log_pr_curve=false"]
SMALL = {"ad-aggregate": ["--bootstrap", "50"], "ad-report": ["--bootstrap", "50", "--max-images", "4"]}


def quickstart_commands(readme: str) -> List[List[str]]:
    """The command lines of the first ```bash block under README's "Quick start" heading (comments dropped)."""
    section = re.search(r"^## Quick start.*?$(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "README's quick start has no ```bash block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines()
            if shlex.split(line, comments=True)]


def entry_points() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, _, target in (l.partition("=") for l in lines)}


def as_process(cmd: List[str]) -> List[str]:
    """`ad-x args` → the installed console script when this interpreter has it, else `python -m` of the module
    the script runs (setup.cfg's entry point), so the test runs from a source checkout too."""
    scripts = entry_points()
    assert cmd[0] in scripts, f"README quick start runs {cmd[0]!r}, which setup.cfg does not install"
    extra = TINY if cmd[0] == "ad-train" else SMALL.get(cmd[0], [])
    installed = Path(sys.executable).parent / cmd[0]
    module, _, func = scripts[cmd[0]].partition(":")
    assert func == "main"
    head = [str(installed)] if installed.is_file() and os.access(installed, os.X_OK) else [sys.executable, "-m", module]
    return head + cmd[1:] + extra


def test_readme_quickstart_runs_in_order_in_an_empty_folder(tmp_path):
    cmds = quickstart_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert [c[0] for c in cmds] == ["ad-train", "ad-train", "ad-aggregate", "ad-report", "ad-predict"]
    work = tmp_path / "newcomer"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "AD_ROOT"}  # a newcomer has no AD_ROOT
    env.update(PYTHONPATH=str(REPO), CI="1", HYDRA_FULL_ERROR="0")
    outputs = []
    for cmd in cmds:
        # generous: a safety net for a hung command, not a speed check (the sweep took 370 s under load 40)
        proc = subprocess.run(as_process(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        outputs.append(proc.stdout + proc.stderr)

    # 1. one run under outputs/ of the launch folder, data generated under datasets/ there
    runs = list((work / "outputs").glob("patchcore/synthetic/syn_disc/*/results.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["status"] == "ok"
    assert (work / "datasets" / "synthetic" / "syn_disc").is_dir() and (work / ".cache").is_dir()
    # 2. the sweep: 2 models × 3 categories, folders named after what varies only
    sweep = work / "multirun" / "first"
    jobs = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    assert len(jobs) == 6 and all(r["status"] == "ok" for r in jobs.values()), {k: r["error"] for k, r in jobs.items()}
    assert {name.split("_", 1)[1] for name in jobs} == {f"{m}_synthetic_{c}" for m in ("patchcore", "padim")
                                                       for c in ("syn_tiles", "syn_weave", "syn_disc")}
    assert "ad-aggregate" in outputs[1]  # the sweep's closing lines name the next command
    # 3. the table, 4. the report
    table = (sweep / "results.md").read_text()
    assert "syn_tiles" in table and "patchcore" in table and "padim" in table
    assert (sweep / "report" / "index.html").stat().st_size > 0
    # 5. predict: one row per test image of the category the README points at
    pred_dir = Path(work, cmds[4][1].split("=", 1)[1], "predict") if cmds[4][1].startswith("run_dir=") else None
    assert pred_dir is not None and (pred_dir / "predictions.csv").is_file()
    source = Path(work, next(a for a in cmds[4] if a.startswith("input=")).split("=", 1)[1])
    n_images = sum(1 for p in source.rglob("*.png"))
    with open(pred_dir / "predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == n_images > 0
    shutil.rmtree(work)  # the run folders are large for a tmp dir kept by pytest


def test_a_user_install_without_the_sweep_extra_runs_without_plugin_warnings(tmp_path):
    """`pip install .` has no hydra-joblib-launcher: Hydra's plugin scan imports our launcher module on every run
    and must not print an 'Error importing ... Plugin is incompatible' warning for it."""
    code = """
import sys, warnings
class Block:  # as if hydra-joblib-launcher were not installed
    def find_spec(self, name, path=None, target=None):
        if name.startswith("hydra_plugins.hydra_joblib_launcher") or name == "joblib":
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
warnings.simplefilter("error")
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
names = [p.__name__ for p in Plugins.instance().discover(Launcher)]
assert "RobustJoblibLauncher" not in names, names
import ad.train
ad.train.register_plugins()  # quietly does nothing
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_user_wheel_carries_every_config(tmp_path):
    """`pip install .` (not editable) installs a wheel: the configs must be inside it (as ad/conf), or every
    command fails with "Primary config module 'conf' not found"."""
    import zipfile

    src = tmp_path / "src"  # build from a copy: the build writes build/ and *.egg-info next to setup.cfg
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "multirun", "datasets", ".cache", "backbones", "build", "*.egg-info",
        "__pycache__", "site", "tests", "docs", "scripts"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        import pytest

        pytest.skip("pip is not available in this interpreter")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("ad-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"ad/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)[:5]
    assert "hydra_plugins/ad_launchers/robust_joblib.py" in names
