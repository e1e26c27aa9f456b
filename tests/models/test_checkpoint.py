from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import CheckpointError, load_checkpoint, save_checkpoint
from tests.failures import (
    FP32_BUILD,
    Case,
    Fails,
    RunsCode,
    Shared,
    assert_fails_cleanly,
    edited_card,
    other_variant,
    pickle_running_code,
    run_case,
    truncated,
    write_bytes,
)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return models.create_model("s2mlpv2_tiny_test").eval()


def test_round_trip_gives_bit_identical_outputs(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "tiny.safetensors", {"note": "test"})
    loaded = load_checkpoint(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tiny(x), loaded(x))
    assert loaded.config == tiny.config
    assert loaded.card.provenance == {"note": "test"}


def test_card_is_written_beside_the_weights(tiny, tmp_path):
    save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    card = json.loads((tmp_path / "tiny.json").read_text())
    assert card["model"] == "s2mlpv2_tiny_test"
    assert card["preprocessing"]["input_size"] == [3, 32, 32]
    assert set(card["preprocessing"]) == {"input_size", "mean", "std", "crop_pct", "interpolation"}


def test_saved_files_get_the_permissions_open_would_give(tiny, tmp_path):
    umask = os.umask(0o022)
    try:
        save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    finally:
        os.umask(umask)
    for name in ("tiny.safetensors", "tiny.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name  # not mkstemp's (or safetensors') 0600


def test_lone_safetensors_file_still_knows_its_config(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    (tmp_path / "tiny.json").unlink()
    assert load_checkpoint(path).config == tiny.config


def test_pickle_that_would_run_code_is_refused_and_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = RunsCode(marker)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"head.weight": payload}, f)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_truncated_safetensors_gives_a_clear_error(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    (tmp_path / "tiny.json").unlink()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", os.urandom(4096)], ids=["empty", "random-bytes"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_empty_or_random_files_give_clear_errors(tmp_path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="empty|truncated or corrupt|could run code"):
        load_checkpoint(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_checkpoint_for_another_variant_names_that_variant(tmp_path):
    cifar = models.create_model("s2mlpv2_cifar10")
    path = tmp_path / "cifar.pt"
    torch.save(cifar.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit s2mlpv2_tiny_test.*s2mlpv2_cifar10") as info:
        load_checkpoint(path, model_name="s2mlpv2_tiny_test")
    assert "vs model" in str(info.value)  # the first mismatches are listed


def test_plain_state_dict_with_ddp_prefix_and_wrapper_loads(tiny, tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}, "epoch": 3}, path)
    loaded = load_checkpoint(path)
    assert loaded.config.name == "s2mlpv2_tiny_test"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tiny(x), loaded(x))


def test_vip_style_keys_load_and_num_classes_follows_the_head(tmp_path):
    model = models.create_model("s2mlpv2_tiny_test", num_classes=3)
    state = model.state_dict()
    assert any(k.startswith("network.0.0.attn.mlp_c") for k in state)  # ViP's names
    path = tmp_path / "vip.pth"
    torch.save({"model": state}, path)
    loaded = load_checkpoint(path)
    assert loaded.head.out_features == 3


def test_card_that_disagrees_with_weights_is_an_error(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    card = json.loads((tmp_path / "tiny.json").read_text())
    card["config"]["embed_dims"] = [16, 64]
    (tmp_path / "tiny.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="disagrees"):
        load_checkpoint(path)


def test_invalid_card_json_is_an_error(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    (tmp_path / "tiny.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_card_command_shows_the_card_and_stores_provenance(tiny, tmp_path, capsys):
    from models.card import main

    path = save_checkpoint(tiny, tmp_path / "w.safetensors")
    value = tmp_path / "speed.json"
    value.write_text(json.dumps({"b1_ms": 1.5}))
    assert main(["set", str(path), "speed", str(value)]) == 0
    capsys.readouterr()
    assert main(["show", str(path)]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["model"] == tiny.config.name and card["provenance"]["speed"] == {"b1_ms": 1.5}
    reloaded = load_checkpoint(path)  # the weights are untouched by the header rewrite, and the card inside agrees
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), tiny.state_dict().values()))
    assert reloaded.card.provenance["speed"] == {"b1_ms": 1.5}
    value.write_text("not json")
    status = main(["set", str(path), "speed", str(value)])
    assert_fails_cleanly(status, capsys.readouterr().err, Fails("is not JSON", "give a JSON file"))


def test_failed_save_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad input, through the tools


CLEAN_FAILURES = [
    Case(
        "checkpoint-missing",
        "build_engine",
        lambda tmp, s: [*FP32_BUILD, "--checkpoint", str(tmp / "nope.safetensors"), "--out", str(tmp / "out")],
        Fails("checkpoint not found", "check the path"),
    ),
    Case(
        "checkpoint-empty",
        "pipeline.export",
        lambda tmp, s: ["--checkpoint", str(write_bytes(tmp / "empty.safetensors", b"")), "--out", str(tmp / "out" / "m.onnx")],
        Fails(r"empty \(0 bytes\)", "re-copy or re-save"),
    ),
    Case(
        "checkpoint-truncated",
        "pipeline.verify",
        lambda tmp, s: [
            "--checkpoint",
            str(truncated(s.checkpoint, tmp / "t.safetensors")),
            "--artifact",
            str(s.onnx),
            "--data",
            str(s.images),
            "--out",
            str(tmp / "out" / "report.json"),
        ],
        Fails("not a readable safetensors file", "truncated or corrupt: re-copy or re-save"),
    ),
    Case(
        "checkpoint-random-bytes",
        "pipeline.verify",
        lambda tmp, s: [
            "--checkpoint",
            str(write_bytes(tmp / "r.pt", np.random.default_rng(0).bytes(4096))),
            "--artifact",
            str(s.onnx),
            "--data",
            str(s.images),
            "--out",
            str(tmp / "out" / "report.json"),
        ],
        Fails("not a readable PyTorch checkpoint", "re-copy or re-save"),
    ),
    Case(
        "checkpoint-unsupported-type",
        "build_engine",
        lambda tmp, s: [*FP32_BUILD, "--checkpoint", str(write_bytes(tmp / "w.h5", b"HDF")), "--out", str(tmp / "out")],
        Fails(r"unsupported checkpoint type '\.h5'", r"use \.safetensors or a PyTorch state dict"),
    ),
    Case(
        "checkpoint-for-another-variant",
        "calibration.__main__",
        other_variant,
        Fails(
            r"does not fit s2mlpv2_tiny_test \(\d+ mismatches: .* vs model", "s2mlpv2_cifar10 checkpoint .* delete the stale card"
        ),
    ),
    Case(
        "checkpoint-pickle-runs-code",
        "build_engine",
        pickle_running_code,
        Fails("could run code when unpickled; refused", r"Re-save it as a plain state_dict"),
    ),
    Case(
        "card-disagrees-with-weights",
        "pipeline.export",
        lambda tmp, s: [
            "--checkpoint",
            str(edited_card(s.checkpoint, tmp, lambda c: c["config"].update(embed_dims=[16, 64]))),
            "--out",
            str(tmp / "out" / "m.onnx"),
        ],
        Fails("disagrees with the card inside", "delete the stale JSON or re-save"),
    ),
    Case(
        "card-with-zero-std",
        "build_engine",
        lambda tmp, s: [
            *FP32_BUILD,
            "--checkpoint",
            str(edited_card(s.checkpoint, tmp, lambda c: c["preprocessing"].update(std=[0, 0, 0]))),
            "--out",
            str(tmp / "out"),
        ],
        Fails("std must be positive", "re-save it"),
    ),
    # ONNX files,
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)
