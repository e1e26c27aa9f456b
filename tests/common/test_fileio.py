import os
from pathlib import Path

import pytest

import common.fileio as fileio
from common.fileio import atomic_path, atomic_paths


def _report(folder: Path) -> list[Path]:
    return [folder / "r.json", folder / "r.md", folder / "r.png"]


def _write_all(paths, text: str) -> None:
    with atomic_paths(*paths) as temps:
        for tmp in temps:
            tmp.write_text(text)


def test_atomic_paths_writes_all_and_leaves_nothing_else(tmp_path):
    paths = _report(tmp_path)
    _write_all(paths[:2], "old")
    _write_all(paths, "new")
    assert [p.read_text() for p in paths] == ["new"] * 3
    assert sorted(os.listdir(tmp_path)) == ["r.json", "r.md", "r.png"]
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~_umask() for p in paths)


@pytest.mark.parametrize("failing", ["r.md", "r.png"])
@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "copies"])
def test_a_failed_rename_puts_back_the_files_already_renamed(tmp_path, monkeypatch, failing, links):
    paths = _report(tmp_path)
    _write_all(paths[:2], "old")  # an earlier run left r.json and r.md, no r.png
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == failing and str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    if not links:
        monkeypatch.setattr(fileio.os, "link", lambda *a: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    with pytest.raises(OSError) as caught:
        _write_all(paths, "new")
    assert caught.value.filename == str(tmp_path / failing)  # the target, not its temporary file
    assert [p.read_text() for p in paths[:2]] == ["old", "old"] and not paths[2].exists()
    assert sorted(os.listdir(tmp_path)) == ["r.json", "r.md"]  # no temporary file, no kept copy


def test_an_interrupt_inside_the_block_changes_nothing(tmp_path):
    paths = _report(tmp_path)
    _write_all(paths, "old")
    with pytest.raises(KeyboardInterrupt), atomic_paths(*paths) as temps:
        temps[0].write_text("new")
        raise KeyboardInterrupt
    assert [p.read_text() for p in paths] == ["old"] * 3
    assert sorted(os.listdir(tmp_path)) == ["r.json", "r.md", "r.png"]


def test_atomic_path_is_the_one_file_case(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x" and os.listdir(target.parent) == ["a.bin"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
