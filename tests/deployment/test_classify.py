"""``python -m pipeline.classify``: the table, the JSON, folders, accuracy against folder names, and images that fail."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.failures import Case, Fails, Shared, run_case, write_bytes


def _classify(run_cli, *args, timeout: float = 600):
    return run_cli("pipeline.classify", *map(str, args), timeout=timeout)


def test_json_has_one_object_per_image_with_its_top_k(shared: Shared, run_cli):
    proc = _classify(run_cli, shared.build, shared.images, "--json", "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    files = sorted(str(p) for p in shared.images.rglob("*.png"))
    assert sorted(a["image"] for a in answers) == files  # the folder, walked recursively
    for a in answers:
        assert [set(t) for t in a["top"]] == [{"index", "label", "probability"}] * 3
        probabilities = [t["probability"] for t in a["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert "onnxruntime on CPU" in proc.stderr and f"{len(files)} images classified" in proc.stderr


def test_the_table_shows_each_image_s_top_k(shared: Shared, run_cli):
    image = sorted(shared.images.rglob("*.png"))[0]
    proc = _classify(run_cli, shared.build, image)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["image", "rank", "index", "label", "probability"]
    assert lines[1].startswith(str(image)) and [line.split()[-4] for line in lines[1:]] == ["1", "2", "3", "4", "5"]


def test_an_unreadable_image_is_named_the_others_classified_and_the_status_is_1(shared: Shared, run_cli, tmp_path):
    folder = Path(shutil.copytree(shared.images, tmp_path / "images"))
    write_bytes(folder / "class_0" / "broken.png", b"not a png")
    proc = _classify(run_cli, shared.build, folder, tmp_path / "missing.jpg", "--json")
    assert proc.returncode == 1
    assert re.search(r"error: .*broken\.png: not a readable image", proc.stderr)
    assert re.search(r"error: .*missing\.jpg: no such file", proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(json.loads(proc.stdout)) == len(list(shared.images.rglob("*.png")))


def test_accuracy_against_folder_names_is_printed_for_an_image_folder_of_the_model_s_classes(shared: Shared, run_cli, tmp_path):
    import numpy as np

    from deployment.deployed import DeployedModel

    model = DeployedModel.open(shared.build)
    sources = sorted(shared.images.rglob("*.png"))
    for i, path in enumerate(sources):  # file each image under the class the model names first or second
        label = model.predict(path, top_k=2)[0].top[i % 2].label
        write_bytes(tmp_path / "tree" / label / f"{i}-{path.name}", path.read_bytes())
    proc = _classify(run_cli, shared.build, tmp_path / "tree")
    assert proc.returncode == 0, proc.stderr
    expected = np.mean([i % 2 == 0 for i in range(len(sources))]) * 100
    assert f"top-1 accuracy against the folder names: {expected:.2f} %" in proc.stderr


@pytest.mark.slow
def test_accuracy_on_the_bundled_images_equals_verify_s_deployed_top1(shipped_fp16_build: Path, run_cli):
    from calibration.bundled import VERIFY

    proc = _classify(run_cli, shipped_fp16_build, VERIFY, "--json")
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    correct = [a["top"][0]["label"] == Path(a["image"]).parent.name for a in answers]
    # classify runs the build's CPU route (the plan needs a GPU): compare with that route's verify report
    summary = json.loads((shipped_fp16_build / "summary.json").read_text())
    route = summary["cpu_route"]
    report = next(r["report"] for r in summary["cpu_routes"] if r["artifact"] == route["artifact"])
    assert route["artifact"] in proc.stderr
    verified = json.loads((shipped_fp16_build / report).read_text())
    assert len(answers) == verified["n_images"] == 500
    assert sum(correct) / len(correct) == verified["deployed"]["top1"]


def empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


CLEAN_FAILURES = [
    Case(
        "model-missing",
        "pipeline.classify",
        lambda tmp, s: [str(tmp / "nowhere"), str(s.images)],
        Fails("nowhere does not exist", "give a build directory"),
    ),
    Case(
        "no-images",
        "pipeline.classify",
        lambda tmp, s: [str(s.build), str(empty_folder(tmp))],
        Fails("no images in .*empty", "give image files or folders"),
    ),
    Case(
        "top-k-zero",
        "pipeline.classify",
        lambda tmp, s: [str(s.build), str(s.images), "--top-k", "0"],
        Fails("--top-k must be at least 1", "at least 1"),
    ),
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)


# ---- the walk: symlinked folders, loops, FIFOs and unreadable folders ---------------------------


def _walk(*paths):
    from deployment.deployed import iter_image_files

    skipped: list[tuple[str, str, bool]] = []
    files = list(iter_image_files(paths, lambda path, reason, is_error: skipped.append((str(path), reason, is_error))))
    return [str(f) for f in files], skipped


def test_a_symlinked_folder_is_followed_once_and_a_loop_is_named_not_walked(tmp_path: Path):
    outside = tmp_path / "outside"
    write_bytes(outside / "b.png", b"x")
    root = tmp_path / "root"
    write_bytes(root / "a.png", b"x")
    (root / "linked").symlink_to(outside)  # followed
    (root / "again").symlink_to(outside)  # the same folder a second way: not walked twice
    (root / "linked_up").symlink_to(root)  # a loop back to the top
    files, skipped = _walk(root)
    assert files == [str(root / "a.png"), str(root / "again" / "b.png")]
    reasons = {Path(p).name: (reason, is_error) for p, reason, is_error in skipped}
    assert reasons["linked"] == ("the same folder as one already walked (through a symlink); not walked twice", False)
    assert reasons["linked_up"][0].startswith("symlink loop") and not reasons["linked_up"][1]


def test_a_fifo_named_like_an_image_is_skipped_with_a_reason_not_opened(tmp_path: Path):
    write_bytes(tmp_path / "a.png", b"x")
    os.mkfifo(tmp_path / "x.jpg")  # opening it for reading would block forever
    files, skipped = _walk(tmp_path)
    assert files == [str(tmp_path / "a.png")]
    assert skipped == [(str(tmp_path / "x.jpg"), "not a regular file (a FIFO); skipped", False)]


def test_a_self_loop_link_and_a_broken_link_are_named_with_their_real_reason(tmp_path: Path):
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    files, skipped = _walk(tmp_path)
    assert files == []
    assert {Path(p).name: r for p, r, _ in skipped} == {
        "gone.jpg": "no such file (or a broken symlink)",
        "loop.jpg": "symlink loop (too many levels of symbolic links)",
    }


def test_a_folder_that_cannot_be_listed_is_an_error_saying_permission_denied(tmp_path: Path, monkeypatch):
    import errno

    write_bytes(tmp_path / "open" / "a.png", b"x")
    write_bytes(tmp_path / "closed" / "b.png", b"x")
    real_scandir = os.scandir

    def scandir(path):  # as the kernel answers a non-owner for a 0700 folder (root is never refused)
        if Path(path).name == "closed":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, skipped = _walk(tmp_path)
    assert files == [str(tmp_path / "open" / "a.png")]
    assert skipped == [(str(tmp_path / "closed"), "folder not read: permission denied", True)]


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root, whom file permissions do not refuse")
def test_an_unreadable_image_file_says_permission_denied(tmp_path: Path):
    from common.images import ImageError, load_rgb

    image = write_bytes(tmp_path / "a.png", b"x")
    image.chmod(0)
    with pytest.raises(ImageError, match="a.png: permission denied"):
        load_rgb(image)


def test_classify_follows_links_skips_a_fifo_in_one_line_and_does_not_hang(shared: Shared, run_cli, tmp_path: Path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "linked").symlink_to(shared.images)
    (tree / "loop").symlink_to(tree)
    os.mkfifo(tree / "x.jpg")
    given_fifo = tmp_path / "given.png"
    os.mkfifo(given_fifo)
    proc = _classify(run_cli, shared.build, tree, given_fifo, "--json", timeout=120)
    n = len(list(shared.images.rglob("*.png")))
    assert len(json.loads(proc.stdout)) == n, proc.stderr
    assert f"skipped: {tree / 'x.jpg'}: not a regular file (a FIFO); skipped" in proc.stderr
    assert re.search(r"skipped: .*loop: symlink loop", proc.stderr)
    assert f"error: {given_fifo}: not a regular file (a FIFO)" in proc.stderr
    assert proc.returncode == 1 and "Traceback" not in proc.stderr  # the given FIFO could not be read
