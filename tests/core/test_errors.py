"""The exit-code table (core.errors.EXIT_CODES): a fault a user can fix is one line and its code, a bug a traceback."""

import sys

import pytest
import yaml

from edge_glass.cli import run_stage, stage_parser
from edge_glass.core.errors import (
    EXIT_DATA,
    EXIT_NOT_COMPARABLE,
    EXIT_PARAMS,
    DataError,
    MediaError,
    OutputError,
    ParamsError,
    exit_code,
)


def test_every_known_fault_has_its_code_and_a_bug_has_none():
    assert exit_code(ParamsError("x")) == EXIT_PARAMS == 2
    assert exit_code(DataError("x")) == exit_code(OutputError("x")) == exit_code(FileNotFoundError("x")) == EXIT_DATA == 3
    assert exit_code(ImportError("x")) == EXIT_DATA
    assert EXIT_NOT_COMPARABLE == 4
    assert exit_code(RuntimeError("x")) is None and exit_code(MediaError("x")) is None  # a media fault is a reject


@pytest.mark.parametrize("fault, code, line", [
    (DataError("download.local entry 'x': 0 of 3 kept"), 3, "[demo] error: download.local entry 'x': 0 of 3 kept"),
    (ParamsError("align.dim: must be >= 1"), 2, "[demo] invalid params:\nalign.dim: must be >= 1"),
])
def test_run_stage_turns_a_known_fault_into_one_line_and_its_code(tmp_path, monkeypatch, capsys, fault, code, line):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 0}))
    monkeypatch.setattr(sys, "argv", ["demo", "--params", str(tmp_path / "params.yaml")])

    def body(params, args):
        raise fault

    with pytest.raises(SystemExit) as stop:
        run_stage("demo", stage_parser("demo"), body)
    assert stop.value.code == code
    assert capsys.readouterr().err.strip() == line


def test_run_stage_lets_a_bug_raise(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 0}))
    monkeypatch.setattr(sys, "argv", ["demo", "--params", str(tmp_path / "params.yaml")])

    def body(params, args):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_stage("demo", stage_parser("demo"), body)
