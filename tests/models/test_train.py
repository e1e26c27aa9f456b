from __future__ import annotations

import errno
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_image_folder
from tests.failures import Case, Fails, Shared, assert_fails_cleanly, run_case, write_bytes

FAST_RECIPE = [
    "--model",
    "s2mlpv2_tiny_test",
    "--batch-size",
    "8",
    "--lr",
    "3e-3",
    "--warmup-epochs",
    "0",
    "--aa",
    "none",
    "--mixup",
    "0",
    "--cutmix",
    "0",
    "--reprob",
    "0",
    "--scale",
    "1",
    "1",
    "--smoothing",
    "0",
    "--drop-path",
    "0",
    "--ema-decay",
    "0.9",
    "--workers",
    "0",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_image_folder(root / "train", per_class=16), make_image_folder(root / "val", per_class=4, seed=1)


@pytest.mark.slow
def test_training_lowers_loss_and_resume_continues(folders, tmp_path, run_cli):
    train, val = folders
    out = tmp_path / "run"
    run_cli("models.train", "--train", train, "--val", val, "--output", out, "--epochs", "4", *FAST_RECIPE, check=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] * 0.8
    for name in ("best.safetensors", "best.json", "last.safetensors", "last_state.pt", "curves.png"):
        assert (out / name).is_file(), name

    proc = run_cli(
        "models.train", "--train", train, "--val", val, "--output", out, "--epochs", "6", "--resume", *FAST_RECIPE, check=True
    )
    assert "resuming" in proc.stdout and "at epoch 4" in proc.stdout
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4, 5]
    card = json.loads((out / "last.json").read_text())
    assert card["provenance"]["epochs_completed"] == 6
    assert card["class_names"] == ["class_0", "class_1", "class_2"]


@pytest.mark.slow
def test_refuses_to_overwrite_a_run_without_resume(folders, tmp_path, run_cli):
    train, val = folders
    out = tmp_path / "run"
    run_cli("models.train", "--train", train, "--output", out, "--epochs", "1", *FAST_RECIPE, check=True)
    proc = run_cli("models.train", "--train", train, "--output", out, "--epochs", "1", *FAST_RECIPE)
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_without_state_is_a_clear_error(folders, tmp_path, run_cli):
    train, _ = folders
    proc = run_cli("models.train", "--train", train, "--output", tmp_path / "none", "--resume", *FAST_RECIPE)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_evaluate_reports_json_fractions(folders, tmp_path, run_cli):
    train, val = folders
    out = tmp_path / "run"
    run_cli("models.train", "--train", train, "--val", val, "--output", out, "--epochs", "3", *FAST_RECIPE, check=True)
    proc = run_cli(
        "models.evaluate", "--checkpoint", out / "best.safetensors", "--data", val, "--json", "--workers", "0", check=True
    )
    result = json.loads(proc.stdout)
    assert result["n"] == 12
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    best = json.loads((out / "best.json").read_text())["provenance"]["val"]
    assert result["top1"] == pytest.approx(best["top1"])


@pytest.mark.slow
def test_ddp_training_with_gloo_on_cpu(folders, tmp_path):
    train, val = folders
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29533",
            "-m",
            "models.train",
            "--train",
            str(train),
            "--val",
            str(val),
            "--output",
            str(out),
            "--epochs",
            "2",
            *FAST_RECIPE,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "last.json").read_text())
    assert card["provenance"]["processes"] == 2
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["val_top1"] is not None


# ----------------------------------------------------------------------------- bad input, through the tools


CLEAN_FAILURES = [
    Case(
        "evaluate-folder-empty",
        "models.evaluate",
        lambda tmp, s: [
            "--checkpoint",
            str(s.checkpoint),
            "--data",
            str(write_bytes(tmp / "d" / ".keep", b"").parent),
            "--workers",
            "0",
        ],
        Fails("is not an ImageFolder tree", "one sub-folder of images per class"),
    ),
    Case(
        "evaluate-text-named-jpg",
        "models.evaluate",
        lambda tmp, s: [
            "--checkpoint",
            str(s.checkpoint),
            "--data",
            str(write_bytes(tmp / "d" / "c0" / "a.jpg", b"text").parents[1]),
            "--workers",
            "0",
        ],
        Fails(r"no readable images .*1 unreadable", "give readable images"),
    ),
    Case(
        "evaluate-folders-are-not-the-model-classes",
        "models.evaluate",
        lambda tmp, s: [
            "--checkpoint",
            str(ROOT / "models/weights/s2mlpv2_cifar10.safetensors"),
            "--data",
            str(s.images),
            "--workers",
            "0",
        ],
        Fails(r"folders \['class_0', 'class_1'\] .* are not classes of this model", "sub-folders are the class names"),
    ),
    Case(
        "split-holds-out-too-many",
        "models.data",
        lambda tmp, s: ["split", "--src", str(s.images), "--out", str(tmp / "out"), "--per-class", "4"],
        Fails("class class_0 has 4 images, not more than the 4 to hold out", "hold out fewer per class"),
    ),
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)


def test_disk_full_while_splitting_leaves_no_partial_tree(shared: Shared, tmp_path: Path, monkeypatch, capsys):
    copies = []

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))  # no hard links: every file is copied

    def copy_until_full(src, dst):
        if len(copies) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        copies.append(shutil.copyfile(src, dst))

    monkeypatch.setattr(os, "link", cross_device)
    monkeypatch.setattr(shutil, "copy2", copy_until_full)
    argv = ["split", "--src", str(shared.images), "--out", str(tmp_path / "out"), "--per-class", "1"]
    status = importlib.import_module("models.data").main(argv)
    assert_fails_cleanly(status, capsys.readouterr().err, Fails(r"no space left writing .*\.png on the disk", "free some space"))
    assert len(copies) == 3 and list(tmp_path.iterdir()) == []  # neither OUT nor OUT.partial
