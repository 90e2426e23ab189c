"""Conventions of the ``gradcomp`` command: ``--version``, help on stderr with exit status 2 when no
command is given, results on stdout and everything else (progress, "wrote", "done in") on stderr,
and one line on stderr for a ``ValueError`` that escapes a command."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import pytest
import xarray as xr

from gradcomp.cli import main

VERSION = importlib.metadata.version("gradcomp")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gradcomp", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse's version action exits
        from gradcomp.cli import build_parser

        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradcomp {VERSION}"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"gradcomp {VERSION}"


def test_version_and_bare_command_in_a_real_process() -> None:
    proc = _run("--version")
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, f"gradcomp {VERSION}", "")
    proc = _run()
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("usage: gradcomp") and "ncnet" in proc.stderr


def test_bare_command_prints_help_on_stderr(capsys) -> None:
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: gradcomp")
    for name in ("ncnet", "lora", "sweep", "--version"):
        assert name in err


def test_help_asked_for_goes_to_stdout(capsys) -> None:
    assert main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: gradcomp") and err == ""


def test_ncnet_result_on_stdout_the_rest_on_stderr(capsys, tmp_path) -> None:
    out_file = tmp_path / "n.nc"
    argv = ["ncnet", "--widths", "2", "--seeds", "4", "--steps", "3", "--n-boot", "20",
            "--no-control", "--out", str(out_file)]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    # stdout: the table alone
    assert "wrote" not in out and "done in" not in out and "engine" not in out
    assert "%|" not in out  # no progress bar
    assert out.strip() and re.search(r"^\s*2\s", out, re.MULTILINE), out  # the width-2 row
    # stderr: the progress bar, what was written and the time
    assert "%|" in err
    assert f"wrote {out_file}" in err and f"wrote {tmp_path / 'n_capacity.png'}" in err
    assert re.search(r"^done in \d+\.\d s$", err, re.MULTILINE), err
    # the command line goes into the Dataset's CF history
    ds = xr.load_dataset(out_file, engine="h5netcdf")
    assert "(command: gradcomp ncnet --widths 2" in ds.attrs["history"]


def test_a_value_error_that_escapes_a_command_is_one_line(capsys, monkeypatch, tmp_path) -> None:
    """A ValueError raised past a command's own checks is one line, exit status 1."""
    import gradcomp.commands.lora

    def bad(*args, **kwargs):
        raise ValueError("rank 3 does not fit:\n  the encoder has 2 heads")

    monkeypatch.setattr(gradcomp.commands.lora, "check_device", bad)  # not caught by lora.run
    rc = main(["lora", "--tiny", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines() == [
        "gradcomp lora: error: rank 3 does not fit: the encoder has 2 heads"
    ]
