"""The `key=value` tools (predict, export, serve, deploy.predict, submission) share one parser and one error
path (`ad.io.cli`): a misspelled or repeated key, a bad number or switch is one line and exit 2 before any work."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from ad.errors import ConfigError
from ad.io import image_inputs, parse_key_values
from ad.values import boolean

# tool module -> the arguments that would be valid apart from the mistake under test
TOOLS = {
    "ad.predict": ["run_dir=/nowhere", "input=/nowhere"],
    "ad.export.__main__": ["run_dir=/nowhere"],
    "ad.serve.__main__": ["model=/nowhere"],
    "ad.deploy.predict": ["model=/nowhere", "input=/nowhere"],
    "ad.submission.mvtec_ad2": ["check=/nowhere", "root=/nowhere"],
}


def _main(module):
    return importlib.import_module(module).main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("module", TOOLS)
def test_a_misspelled_key_is_one_line_naming_it(module, capsys):
    assert _main(module)([*TOOLS[module], "ouptut=/tmp/x"]) == 2
    assert "unknown argument 'ouptut=/tmp/x'" in _one_line(capsys)


@pytest.mark.parametrize("module", TOOLS)
def test_a_repeated_key_is_one_line(module, capsys):
    first = TOOLS[module][0]
    assert _main(module)([*TOOLS[module], first + "2"]) == 2
    assert "given twice" in _one_line(capsys)


@pytest.mark.parametrize("module", TOOLS)
def test_help_prints_the_usage(module, capsys):
    assert _main(module)(["--help"]) == 0
    assert "usage: python -m " in capsys.readouterr().out


def test_submission_check_with_a_misspelled_switch_is_refused_not_passed(tmp_path, capsys):
    # Before: unknown keys were dropped silently, so a misspelled `complet=true` ran the check without it
    # (an incomplete submission passed as if only the listed objects were wanted).
    from ad.submission.mvtec_ad2 import main

    (tmp_path / "sub").mkdir()
    assert main([f"check={tmp_path / 'sub'}", f"root={tmp_path}", "complet=true"]) == 2
    assert "complet=true" in _one_line(capsys)


def test_submission_bad_batch_size_is_one_line(tmp_path, capsys):
    # Before: int("abc") raised a ValueError traceback.
    from ad.submission.mvtec_ad2 import main

    assert main([f"run_dir={tmp_path}", f"out={tmp_path / 'o'}", f"root={tmp_path}", "batch_size=abc"]) == 2
    assert "batch_size" in _one_line(capsys)


def test_deploy_predict_out_that_is_a_file_is_one_line_before_the_model_loads(tmp_path, capsys):
    # Before: the model was loaded first, then `out.mkdir` raised FileExistsError (a traceback).
    from ad.deploy.predict import main

    out = tmp_path / "results.txt"
    out.write_text("keep me")
    assert main([f"model={tmp_path / 'no_export'}", f"input={tmp_path}", f"out={out}"]) == 2
    assert "is an existing file" in _one_line(capsys) and out.read_text() == "keep me"


def test_parse_key_values():
    usage = "usage: tool a=<x> [b=<y>]"
    assert parse_key_values(["a=1", "b=x=y"], {"a", "b"}, ("a",), usage) == {"a": "1", "b": "x=y"}
    assert parse_key_values(["a="], {"a"}, ("a",), usage) == {"a": ""}
    for argv, words in ((["b=2"], "missing a=..."), (["a"], "unknown argument 'a'"), (["a=1", "a=2"], "given twice")):
        with pytest.raises(ConfigError, match=words):
            parse_key_values(argv, {"a", "b"}, ("a",), usage)


@pytest.mark.parametrize("text,value", [("true", True), ("Yes", True), ("1", True), ("ON", True), (True, True),
                                        ("false", False), ("no", False), ("0", False), ("Off", False), (False, False)])
def test_boolean(text, value):
    assert boolean(text, "overlays") is value


@pytest.mark.parametrize("text", ["ture", "", "2", "none"])
def test_boolean_refuses_other_words(text):
    with pytest.raises(ConfigError, match="overlays=.* is not a boolean; use overlays=true or overlays=false"):
        boolean(text, "overlays")


def test_image_inputs(tmp_path: Path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for rel in ("b.png", "a/c.JPG", "a/deep/d.tif", "a/notes.txt", "out/old.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = image_inputs(tmp_path, exclude=tmp_path / "out")
    assert got == sorted([tmp_path / "b.png", tmp_path / "a/c.JPG", tmp_path / "a/deep/d.tif"])
    assert image_inputs(tmp_path / "b.png") == [tmp_path / "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        image_inputs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        image_inputs(tmp_path / "missing")
