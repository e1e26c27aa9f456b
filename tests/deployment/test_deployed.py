"""The deployed-model API: which artifact it runs, its card's preprocessing, inputs of every kind, batching, threads, errors."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployment.deployed import DeployedError, DeployedModel, InputImageError, choose_artifact, read_card
from tests.failures import Fails, Shared, assert_api_error_is_one_clean_line, foreign_onnx, trt11_sidecar, write_bytes


def _first_images(shared: Shared, n: int) -> list[Path]:
    return sorted(shared.images.rglob("*.png"))[:n]


def test_a_build_directory_opens_with_its_card_and_says_what_it_runs(shared: Shared):
    model = DeployedModel.open(shared.build)
    assert model.name == "s2mlpv2_tiny_test" and model.input_size == (3, 32, 32)
    # the build's profile is 1,2,4, so batches hold at most 4 images; its artifact is ONNX Runtime's graph
    assert model.max_batch == 4 and model.min_batch == 1
    assert model.description.startswith("onnxruntime on CPU") and "model.ort.onnx" in model.description
    assert "fp32" in model.description and "batches of 1-4" in model.description


def test_every_kind_of_input_gives_the_same_answer(shared: Shared):
    model = DeployedModel.open(shared.build)
    path = _first_images(shared, 1)[0]
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    batch = model.preprocess(path)[None]
    answers = [
        model.predict(path, logits=True)[0],
        model.predict([str(path)], logits=True)[0],
        model.predict(pil, logits=True)[0],
        model.predict(array, logits=True)[0],
        model.predict(path.read_bytes(), logits=True)[0],
        model.predict(batch, logits=True)[0],
    ]
    for a in answers[1:]:
        assert [c.index for c in a.top] == [c.index for c in answers[0].top]
        np.testing.assert_array_equal(a.logits, answers[0].logits)
    assert answers[0].image == str(path) and answers[2].image == "image 0"


def test_top_k_are_sorted_softmax_probabilities_with_labels(shared: Shared):
    model = DeployedModel.open(shared.build)
    (p,) = model.predict(_first_images(shared, 1), top_k=3, logits=True)
    z = np.exp(p.logits - p.logits.max())
    probabilities = z / z.sum()
    assert [c.index for c in p.top] == list(np.argsort(-p.logits)[:3])
    assert [c.probability for c in p.top] == pytest.approx(sorted(probabilities)[::-1][:3])
    assert [c.label for c in p.top] == [model.class_names[c.index] for c in p.top]
    assert len(model.predict(_first_images(shared, 1), top_k=99)[0].top) == model.card.config.num_classes


class Counting:
    """Wraps a runner and records the size of every batch it is given, and whether two calls ever overlapped."""

    def __init__(self, runner, batch_range=None, thread_safe=None) -> None:
        self.runner, self.sizes, self.overlapped, self._inside = runner, [], False, 0
        self.path, self.backend, self.device, self.input_shape = runner.path, runner.backend, runner.device, runner.input_shape
        self.batch_range = batch_range or runner.batch_range
        self.thread_safe = runner.thread_safe if thread_safe is None else thread_safe
        self._lock = threading.Lock()

    def __call__(self, batch):
        with self._lock:
            self._inside += 1
            self.overlapped |= self._inside > 1
        try:
            self.sizes.append(len(batch))
            threading.Event().wait(0.002)  # long enough for a second thread to come in, if it may
            return self.runner(batch)
        finally:
            with self._lock:
                self._inside -= 1


def test_work_is_split_into_batches_the_profile_accepts(shared: Shared):
    model = DeployedModel.open(shared.build)
    counting = Counting(model.runner)
    model = DeployedModel(counting, model.card, batch=4)
    images = [model.preprocess(p) for p in _first_images(shared, 8)] + [model.preprocess(_first_images(shared, 1)[0])]
    model.logits(np.stack(images))
    assert counting.sizes == [4, 4, 1]


def test_warm_up_runs_every_batch_size_the_server_may_form_once(shared: Shared):
    plain = DeployedModel.open(shared.build)
    counting = Counting(plain.runner, batch_range=(2, 4))
    model = DeployedModel(counting, plain.card, batch=8)
    model.warm_up()
    assert counting.sizes == [2, 3, 4]  # the profile's smallest to its largest
    counting.sizes.clear()
    model.warm_up(3)
    assert counting.sizes == [2, 3]


def test_a_batch_below_the_profile_is_padded_and_the_padding_dropped(shared: Shared):
    plain = DeployedModel.open(shared.build)
    counting = Counting(plain.runner, batch_range=(3, 4))
    model = DeployedModel(counting, plain.card, batch=4)
    x = np.stack([plain.preprocess(p) for p in _first_images(shared, 1)])
    got = model.logits(x)
    assert counting.sizes == [3] and got.shape == (1, plain.card.config.num_classes)
    np.testing.assert_allclose(got, plain.logits(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("thread_safe", [True, False], ids=["shared-runner", "runner-that-takes-turns"])
def test_predict_from_several_threads_matches_one_thread(thread_safe: bool, shared: Shared):
    plain = DeployedModel.open(shared.build)
    counting = Counting(plain.runner, thread_safe=thread_safe)
    model = DeployedModel(counting, plain.card, batch=2)
    paths = _first_images(shared, 8)
    want = [p.top for p in plain.predict(paths)]
    results: dict[int, list] = {}

    def work(i: int) -> None:
        results[i] = [p.top for p in model.predict(paths)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(results[i] == want for i in range(4))
    if not thread_safe:
        assert not counting.overlapped  # a runner that is not thread-safe is never entered twice at once


def test_a_non_finite_image_gets_nan_logits_only_where_asked(shared: Shared):
    model = DeployedModel.open(shared.build)
    x = np.stack([model.preprocess(p) for p in _first_images(shared, 2)])
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(InputImageError, match="NaN or Inf"):
        model.logits(x)
    out = model.logits(x, check_finite=False)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[0], model.logits(x[:1])[0])


@pytest.mark.parametrize(
    "bad,expected",
    [
        (lambda tmp: str(tmp / "missing.jpg"), Fails(r"missing\.jpg: no such file", "no such file")),
        (
            lambda tmp: str(write_bytes(tmp / "fake.jpg", b"not an image")),
            Fails(r"fake\.jpg: not a readable image", "not a readable"),
        ),
        (lambda tmp: np.zeros((8, 8, 3), np.float32), Fails("image 0 is a float32 array", r"uint8 \(H, W, 3\)")),
        (lambda tmp: np.zeros((8, 8, 4), np.uint8), Fails(r"image 0 has shape \(8, 8, 4\)", r"uint8 \(H, W, 3\) RGB")),
        (lambda tmp: np.zeros((2, 3, 16, 16), np.float32), Fails(r"got shape \(2, 3, 16, 16\)", r"must be \(N, 3, 32, 32\)")),
        (lambda tmp: 42, Fails("image 0 is a int", "give a file path")),
    ],
    ids=["missing-file", "not-an-image", "float-hwc-array", "rgba-array", "wrong-input-size", "not-an-image-at-all"],
)
def test_bad_input_is_one_error_naming_the_image_or_the_limit(bad, expected, shared: Shared, tmp_path, capsys):
    model = DeployedModel.open(shared.build)
    with pytest.raises(InputImageError) as error:
        model.predict(bad(tmp_path))
    assert_api_error_is_one_clean_line(error.value, expected, capsys)


def test_an_artifact_without_a_card_is_refused(tmp_path, capsys):
    with pytest.raises(DeployedError) as error:
        DeployedModel.open(foreign_onnx(tmp_path / "foreign.onnx"))
    assert_api_error_is_one_clean_line(error.value, Fails("has no model card", "use a graph written by this project"), capsys)


def test_a_missing_path_is_refused(tmp_path, capsys):
    with pytest.raises(DeployedError) as error:
        DeployedModel.open(tmp_path / "nowhere")
    assert_api_error_is_one_clean_line(error.value, Fails("nowhere does not exist", "give a build directory"), capsys)


def _build_with_plan(shared: Shared, tmp_path: Path, cpu_route: str | None = None) -> Path:
    """A copy of the shared build whose package holds a TensorRT 11 plan, built (as its sidecar says) from ``model.onnx``,
    and, if given, ``cpu_route`` as its recorded CPU route."""
    import dataclasses

    from common.fileio import sha256_file
    from engines.package import Package, PackageRoute, write_package

    build = Path(shutil.copytree(shared.build, tmp_path / "build"))
    plan = write_bytes(build / "model.plan", b"plan")
    trt11_sidecar(onnx_sha256=sha256_file(build / "model.onnx")).write(plan)
    (build / "model.ort.onnx").unlink()
    routes = [PackageRoute("tensorrt", "model.plan", ("model.plan", "model.json"), "fp32", "fp32")]
    if cpu_route:
        shutil.copy(build / "model.onnx", build / cpu_route)
        routes.append(PackageRoute("onnxruntime", cpu_route, (cpu_route,), "fp32", "fp32", verdict={"passed": True}))
    write_package(dataclasses.replace(Package.read(build), routes=tuple(routes), cpu_route=cpu_route, files={}))
    return build


def test_a_plan_this_machine_cannot_run_falls_back_to_the_graph_it_was_built_from(shared: Shared, tmp_path):
    build = _build_with_plan(shared, tmp_path)
    # TensorRT 11 is not installed here: a directory runs its package's portable graph, and says why
    choice = choose_artifact(build)
    assert choice.artifact.name == "model.onnx" and "portable graph" in choice.reason
    assert "TensorRT 11 is not installed" in choice.reason
    # the plan alone: the exact graph it was built from, found beside it by its hash
    choice = choose_artifact(build / "model.plan")
    assert choice.artifact.name == "model.onnx" and "the graph model.plan was built from" in choice.reason


def test_the_build_s_recorded_cpu_route_is_preferred(shared: Shared, tmp_path):
    choice = choose_artifact(_build_with_plan(shared, tmp_path, cpu_route="other.onnx"))
    assert choice.artifact.name == "other.onnx" and "fastest CPU route" in choice.reason


def test_a_plan_s_card_comes_from_its_sidecar(shared: Shared, tmp_path):
    build = _build_with_plan(shared, tmp_path)
    card = read_card(shared.onnx).to_dict()
    trt11_sidecar(onnx_sha256="0" * 64, card=card).write(build / "model.plan")  # no graph beside it has that hash
    assert read_card(build / "model.plan").config.name == "s2mlpv2_tiny_test"


def test_the_plan_backend_without_a_plan_is_refused(shared: Shared, capsys):
    with pytest.raises(DeployedError) as error:
        DeployedModel.open(shared.build, backend="plan")
    assert_api_error_is_one_clean_line(error.value, Fails("holds no TensorRT plan", "build one with build_engine.py"), capsys)
