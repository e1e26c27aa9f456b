"""``python -m pipeline.classify``: the table, the JSON, folders, accuracy against folder names, and images that fail."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.failures import Case, Fails, Shared, run_case, write_bytes


def _classify(run_cli, *args):
    return run_cli("pipeline.classify", *map(str, args))


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

    from pipeline.deployed import DeployedModel

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
