"""Every user error reaches the user as one line and exit code 2; ``--debug`` shows the
traceback."""

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
