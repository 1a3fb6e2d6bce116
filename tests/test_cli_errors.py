"""Every user error reaches the user as one line and exit code 2; ``--debug`` shows the
traceback."""

import argparse
import subprocess
import sys

import pytest

from swav.cli import main
from swav.errors import SwAVError


@pytest.mark.parametrize(
    "argv,words",
    [
        (["pretrain", "optim.base_lr=-1"], "optim.base_lr"),
        (["pretrain", "--data", "/no/such/folder", "--run-dir", "{tmp}/r"], "does not exist"),
        (["eval", "knn", "--checkpoint", "{tmp}/missing.pt"], "no checkpoint"),
        (["export", "--checkpoint", "{tmp}/garbage.pt", "--out", "{tmp}/o.pth"], "garbage.pt"),
        (["eval", "cluster", "--checkpoint", "{tmp}/empty_dir"], "no checkpoint"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, words):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "empty_dir").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"swav {argv[0]}: error:") and words in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(SwAVError, match="optim.base_lr"):
        main(["--debug", "pretrain", "optim.base_lr=-1"])


def test_top_level_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from swav.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'swav --help imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pretrain" in out.stdout and "assign" in out.stdout


def test_command_table_matches_what_each_group_registers():
    from swav.cli import COMMANDS, build_parser

    full = build_parser("*")
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert helps == {name: h for name, (_, h) in COMMANDS.items()}


def test_error_messages_are_plain_single_lines():
    from swav.cli import one_line

    assert one_line("bad \x1b[31mred\x1b[0m name") == "bad red name"
    assert one_line("first\n  second\n") == "first; second"
    assert one_line("tab\there \x07bell") == "tab\\there \\x07bell"


def test_a_file_name_with_escape_codes_reaches_the_terminal_inert(tmp_path, capsys):
    weird = tmp_path / "photo\x1b[2J.pt"
    assert main(["export", "--checkpoint", str(weird), "--out", str(tmp_path / "o.pth")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and len(err.strip().splitlines()) == 1
