"""The documentation builds and tells the truth: the MkDocs site builds in strict mode (a broken link, a missing
page or a page left out of the nav fails), the README stays a short front page whose links resolve, and every
`ad-train` / `python -m ad.train` command written in the README or the docs composes with the real configs."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_BYTES = 12 * 1024

needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or
                                  importlib.util.find_spec("material") is None,
                                  reason='mkdocs/mkdocs-material not installed (pip install -e ".[dev]")')


def build_site(project: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(project / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


@needs_mkdocs
def test_docs_site_builds_strict(tmp_path):
    proc = build_site(REPO, tmp_path / "site")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for page in ("index", "install", "quickstart", "benchmarks", "deploy", "cluster"):
        assert (tmp_path / "site" / page / "index.html").is_file() or (tmp_path / "site" / f"{page}.html").is_file(), page


@needs_mkdocs
def test_docs_build_fails_on_a_broken_link_and_an_orphan_page(tmp_path):
    """The strict build is a real check: a copy of the docs with one broken link, then with one page missing
    from the nav, is refused."""
    for breakage in ("link", "orphan"):
        project = tmp_path / breakage
        shutil.copytree(REPO / "docs", project / "docs")
        shutil.copy(REPO / "mkdocs.yml", project / "mkdocs.yml")
        if breakage == "link":
            with open(project / "docs" / "install.md", "a") as f:
                f.write("\nSee [the missing page](no_such_page.md).\n")
        else:
            (project / "docs" / "stray.md").write_text("# Stray\n\nNot in the nav.\n")
        proc = build_site(project, project / "site")
        assert proc.returncode != 0, breakage
        assert ("no_such_page.md" if breakage == "link" else "stray.md") in proc.stdout + proc.stderr


def test_readme_is_a_short_front_page_with_working_links():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < README_MAX_BYTES
    assert text.index("## Install") < text.index("## Quick start")  # the install comes first
    assert "download.pytorch.org/whl/cpu" in text and '".[dev]"' in text
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [l for l in links if not re.match(r"[a-z]+://", l)]
    assert local, "README links no docs pages"
    missing = [l for l in local if not (REPO / l).exists()]
    assert not missing, f"README links to missing files: {missing}"
    # every page of the site is reachable from the front page
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    linked = {Path(l).name for l in local if l.startswith("docs/")}
    assert pages <= linked | {"index.md"}, f"pages not linked from README: {sorted(pages - linked - {'index.md'})}"


def test_every_model_and_dataset_option_is_documented():
    """A model or category option added to conf/ shows up in the README's config groups and the docs' tables."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    models_page = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    count = re.search(r"(\d+) models", readme)
    models = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
    assert count and int(count.group(1)) == len(models)
    for name in models:
        assert re.search(rf"\b{name}\b", readme), f"model {name} missing from README's config groups"
        assert f"`{name}`" in models_page, f"model {name} missing from docs/models.md"
    datasets_page = (REPO / "docs" / "datasets.md").read_text(encoding="utf-8")
    for p in (REPO / "conf" / "dataset").glob("*.yaml"):
        assert p.stem in readme and p.stem in (datasets_page + readme), p.stem


def documented_commands() -> List[Tuple[str, str]]:
    """(file, command line) for every `ad-train` / `python -m ad.train` command in code blocks and inline code."""
    out = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
        lines = [l.strip() for b in blocks for l in b.replace("\\\n", " ").splitlines()]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        lines += [" ".join(m.split()) for m in re.findall(r"`((?:python -m ad\.train|ad-train)\b[^`]*)`", prose)]
        out += [(path.name, l) for l in lines if re.match(r"(python -m ad\.train|ad-train)\b", l)]
    return out


def overrides_of(line: str) -> List[str]:
    """The overrides of a documented command; a sweep value is replaced by its first value (one job of it).
    Placeholders (`<dir>`, `…`) and optional parts (`[key=value]`) are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    tokens = shlex.split(line, comments=True)
    tokens = tokens[3:] if tokens[0] == "python" else tokens[1:]
    out = []
    parser = OverridesParser.create()
    for tok in tokens:
        if tok.startswith("-") or tok in ("job", "hydra") or "=" not in tok or tok.startswith("["):
            continue
        if re.search(r"<|…|\.\.\.", tok):
            continue
        o = parser.parse_override(tok)
        if o.is_sweep_override():
            first = next(iter(o.sweep_string_iterator()))
            tok = f"{o.get_key_element()}={first}"
        out.append(tok)
    return out


def compose_failures(commands: List[Tuple[str, str]]) -> List[str]:
    from omegaconf import OmegaConf

    from ad.config import compose

    failures, seen = [], set()
    for name, line in commands:
        overrides = overrides_of(line)
        if tuple(overrides) in seen:
            continue
        seen.add(tuple(overrides))
        if any(o.startswith("+hparams_search") for o in overrides) and importlib.util.find_spec(
                "hydra_plugins.hydra_optuna_sweeper") is None:
            continue  # the optuna extra is not part of dev
        if "launcher=slurm" in overrides and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
            continue
        try:
            cfg = compose(overrides, output_dir="/tmp/ad-doc-check")
            for key in ("model", "dataset", "trainer", "evaluation", "setting", "paths"):
                OmegaConf.to_container(cfg[key], resolve=True)
        except Exception as exc:  # collect all, report together
            failures.append(f"{name}: {line}\n    {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return failures


def test_documented_commands_compose():
    commands = documented_commands()
    assert len(commands) >= 20  # the extraction itself works
    failures = compose_failures(commands)
    assert not failures, "documented commands that do not compose:\n" + "\n".join(failures)


def test_the_compose_check_catches_a_wrong_key_or_option():
    bad = [("x.md", "ad-train model=patchcore model.no_such_key=1"), ("x.md", "python -m ad.train model=nomodel"),
           ("x.md", "ad-train -m evaluation.objektive=always,never")]
    assert len(compose_failures(bad)) == 3
    assert compose_failures([("x.md", "ad-train -m model=padim,stfpm evaluation.objective=always")]) == []
