"""The one atomic-write helper: permissions, no torn files, folders."""

import json
import os
import stat

import pytest

from diff3r_cli.errors import UserError
from diff3r_cli.fsio import atomic_dir, atomic_output, atomic_write_bytes, atomic_write_json, default_mode


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_new_file_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert _mode(tmp_path / "a.bin") == 0o640
        assert default_mode() == 0o640 and default_mode(directory=True) == 0o750
    finally:
        os.umask(old)


def test_replacing_keeps_permissions(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("{}")
    os.chmod(p, 0o600)
    atomic_write_json(p, {"k": 1})
    assert json.loads(p.read_text()) == {"k": 1}
    assert _mode(p) == 0o600


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_output(p, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "good"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.txt"]


def test_unwritable_place_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_bytes(blocker / "sub" / "x.bin", b"x")


def test_atomic_dir_replaces_whole_folder(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.png").write_text("old")
    with atomic_dir(dest) as d:
        (d / "new.png").write_text("new")
        assert not (dest / "new.png").exists()  # nothing visible until done
    assert sorted(x.name for x in dest.iterdir()) == ["new.png"]
    assert _mode(dest) == default_mode(directory=True)
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as d:
            (d / "partial.png").write_text("x")
            raise RuntimeError("boom")
    assert sorted(x.name for x in dest.iterdir()) == ["new.png"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]
