"""The package installs and its one command works: ``pip install -e .`` gives ``lrc`` with every subcommand's help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("train", "prepare", "convert", "eval", "harness", "bench")


@pytest.fixture(scope="module")
def scratch_lrc(tmp_path_factory) -> Path:
    """A fresh venv (system site packages, plus this interpreter's site directories through a .pth, so torch & co. are not
    reinstalled) with this checkout installed by ``pip install -e . --no-deps``; returns its ``lrc``."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    # --without-pip: pip, setuptools and wheel come from this interpreter's environment (the .pth below), not
    # from the venv's bundled copies (an old setuptools there cannot build an editable wheel)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (Path(site) / "parent_env.pth").write_text("".join(p + "\n" for p in ours))
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lrc = venv / "bin" / "lrc"
    assert lrc.is_file()
    return lrc


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_lrc_help_lists_every_subcommand(scratch_lrc, tmp_path):
    r = _run([str(scratch_lrc), "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in r.stdout


def test_lrc_train_help_shows_the_flag_docs_outside_the_checkout(scratch_lrc, tmp_path):
    r = _run([str(scratch_lrc), "train", "--help"], tmp_path)  # cwd is not the checkout: the installed package
    assert r.returncode == 0, r.stderr
    assert "--aux_loss_scale_factor" in r.stdout and "--target_hidden_size" in r.stdout
    text = " ".join(r.stdout.split())
    assert "alpha: weight of every clone term" in text  # LRCConfig's field docstring is the flag's help
    assert "Student hidden size d_s" in text


@pytest.mark.parametrize("name,text", [
    ("prepare", "the teacher's tokenizer: a directory, a tokenizer.json or a .gguf file"),
    ("convert", "the output directory of the standard HF student"),
    ("eval", "score the first N sequences only"),
    ("harness", "the paper's 9 zero-shot tasks"),
    ("bench", "timed rounds (each runs every phase once)"),
])
def test_every_subcommand_has_help(scratch_lrc, tmp_path, name, text):
    """Each subcommand's --help prints its option dataclass's field docs."""
    r = _run([str(scratch_lrc), name, "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert text in " ".join(r.stdout.split())


def test_unknown_subcommand_is_one_line_and_exit_2(scratch_lrc, tmp_path):
    r = _run([str(scratch_lrc), "trian"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown subcommand 'trian'" in r.stderr


def test_no_sys_path_manipulation_in_the_project_code():
    offenders = [str(p.relative_to(REPO)) for d in ("lrc", "scripts", "data") for p in (REPO / d).rglob("*.py")
                 if "sys.path" in p.read_text()]
    offenders += [p.name for p in REPO.glob("*.py") if "sys.path" in p.read_text()]
    assert offenders == []
