"""The C++ program: built with CMake against the `openvino` wheel, it decodes, preprocesses and classifies as Python does.

One CMake build per test session (``cpp_build``). ``s2mlpv2_preprocess`` (built with or without
OpenVINO) checks decoding and PIL's resampling against Python pixel for pixel;
``s2mlpv2_classify`` is checked on a toy graph (fast, answers known in advance) and on the
shipped CIFAR-10 checkpoint's graphs against Python on the 500 bundled verification images.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CIFAR10_CHECKPOINT, ROOT, missing

pytestmark = pytest.mark.slow  # a CMake build of the C++ programs (about a minute on two cores), then their runs

SOURCE = ROOT / "engines" / "cpp"
VERIFY = ROOT / "calibration" / "data" / "cifar10-verify"
CIFAR10_CARD = json.loads(CIFAR10_CHECKPOINT.with_suffix(".json").read_text())
MISSING_DEPENDENCY = "s2mlpv2: missing dependency"  # CMakeLists.txt's prefix for a missing library
TOOL = "cpp-openvino"  # what .ci/run requires where cmake, a compiler, the libraries and openvino are present


# ---- the build ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory) -> Path:
    cmake = shutil.which("cmake")
    if cmake is None or not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        missing("needs cmake and a C++ compiler: apt-get install -y cmake g++ (engines/cpp/README.md)", TOOL)
    build = tmp_path_factory.mktemp("cpp-build")
    configure = [cmake, "-S", str(SOURCE), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"]
    proc = subprocess.run(configure, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and MISSING_DEPENDENCY in proc.stderr:
        reason = next(line for line in proc.stderr.splitlines() if MISSING_DEPENDENCY in line)
        missing(f"CMake: {reason.strip()}", TOOL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    proc = subprocess.run(
        [cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)], capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return build


@pytest.fixture(scope="session")
def classify(cpp_build):
    """Run ``s2mlpv2_classify ARGS...`` (text, not checked)."""
    program = cpp_build / "s2mlpv2_classify"
    if not program.is_file():
        missing("s2mlpv2_classify was not built: no OpenVINO found; `pip install openvino` in the Python CMake uses", TOOL)

    def _run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=600)

    return _run


def _lines(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines()]


# ---- preprocessing: decoding and PIL's resampling, against Python ------------------------------


def _card_file(folder: Path, **preprocessing) -> Path:
    """The shipped card with its preprocessing replaced."""
    card = {**CIFAR10_CARD, "preprocessing": {**CIFAR10_CARD["preprocessing"], **preprocessing}}
    path = folder / "card.json"
    path.write_text(json.dumps(card))
    return path


def _preprocess_cpp(cpp_build: Path, card: Path, image: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(resized uint8 H x W x 3, model input 3 x H x W) from s2mlpv2_preprocess; ``card`` is a JSON card, a graph or a plan."""
    proc = subprocess.run(
        [str(cpp_build / "s2mlpv2_preprocess"), str(card), str(image), str(out / "x.f32"), "--resized", str(out / "x.rgb")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    width, height = map(int, proc.stdout.split())
    # the input size: a JSON card's own, else (a graph's or a plan's card) the shipped one's
    pre = json.loads(card.read_text())["preprocessing"] if card.suffix == ".json" else CIFAR10_CARD["preprocessing"]
    tensor = np.fromfile(out / "x.f32", np.float32).reshape(3, *pre["input_size"][1:])
    return np.fromfile(out / "x.rgb", np.uint8).reshape(height, width, 3), tensor


def _test_image(width: int, height: int, seed: int = 0):
    """Gradients with 30 % of pixels replaced by noise: every filter's every tap matters."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], -1)
    noisy = np.where(rng.random((height, width, 1)) < 0.3, rng.integers(0, 256, (height, width, 3)), smooth)
    return Image.fromarray(noisy.astype(np.uint8))


def _python_preprocessing(card: Path):
    from models.s2mlpv2 import Preprocessing

    return Preprocessing.from_dict(json.loads(card.read_text())["preprocessing"])


IMAGENET = {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}


@pytest.mark.parametrize(
    "size, preprocessing",
    [
        ((500, 375), {**IMAGENET, "interpolation": "bicubic"}),
        ((375, 500), {**IMAGENET, "interpolation": "bilinear"}),
        ((500, 375), {**IMAGENET, "interpolation": "lanczos"}),
        ((500, 375), {**IMAGENET, "interpolation": "hamming"}),
        ((500, 375), {**IMAGENET, "interpolation": "box"}),
        ((500, 375), {**IMAGENET, "interpolation": "nearest"}),
        ((20, 15), {**IMAGENET, "interpolation": "bicubic"}),  # upscaling
        (
            (1000, 257),
            {**IMAGENET, "input_size": [3, 224, 160], "crop_pct": 0.9, "interpolation": "bicubic"},
        ),  # timm's ResizeKeepRatio
        ((300, 301), {**IMAGENET, "input_size": [3, 300, 300], "crop_pct": 1.2, "interpolation": "bilinear"}),  # crop padded
    ],
    ids=["500x375-bicubic", "375x500-bilinear", "lanczos", "hamming", "box", "nearest", "upscale", "non-square", "padded-crop"],
)
def test_resize_and_crop_match_pil_and_timm(cpp_build, tmp_path, size, preprocessing):
    from common.images import eval_transform, preprocess

    image = _test_image(*size)
    image.save(tmp_path / "image.png")  # lossless: both sides start from the same pixels
    card = _card_file(tmp_path, **preprocessing)
    resized, tensor = _preprocess_cpp(cpp_build, card, tmp_path / "image.png", tmp_path)
    pre = _python_preprocessing(card)
    pil_resized = np.asarray(eval_transform(pre).transforms[0](image))  # timm's resize step alone
    assert resized.shape == pil_resized.shape
    assert np.abs(resized.astype(int) - pil_resized).max() <= 1
    # One uint8 step, normalised, is the most the model input may differ by.
    assert np.abs(tensor - preprocess(image, pre)).max() <= 1 / 255 / min(pre.std) + 1e-6


def test_bundled_jpegs_decode_and_preprocess_exactly_as_python(cpp_build, tmp_path):
    from common.images import load_rgb, preprocess

    card = _card_file(tmp_path)  # the shipped CIFAR-10 card
    pre = _python_preprocessing(card)
    images = sorted(VERIFY.rglob("*.jpg"))[::25]
    assert len(images) == 20
    for image in images:
        _, tensor = _preprocess_cpp(cpp_build, card, image, tmp_path)
        np.testing.assert_array_equal(tensor, preprocess(load_rgb(image), pre), err_msg=str(image))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P-transparent", "I;16", "CMYK"])
def test_other_image_modes_become_the_same_rgb_as_in_python(cpp_build, tmp_path, mode):
    """Transparency over white, grayscale replicated, 16-bit scaled by its range, Adobe CMYK JPEG."""
    from PIL import Image

    from common.images import load_rgb, preprocess

    rgb = _test_image(40, 30, seed=1)
    rng = np.random.default_rng(2)
    if mode in ("RGBA", "LA"):
        image = rgb.convert(mode)
        image.putalpha(Image.fromarray(rng.integers(0, 256, (30, 40)).astype(np.uint8)))
    elif mode == "P-transparent":
        image = rgb.convert("P")
        image.info["transparency"] = 3
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (30, 40)).astype(np.uint16))
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    image.save(path, **({"quality": 95} if mode == "CMYK" else {}))
    card = _card_file(tmp_path, input_size=[3, 30, 40], crop_pct=1.0)
    _, tensor = _preprocess_cpp(cpp_build, card, path, tmp_path)
    pre = _python_preprocessing(card)
    assert np.abs(tensor - preprocess(load_rgb(path), pre)).max() <= 1 / 255 / min(pre.std) + 1e-6


# ---- s2mlpv2_classify on a toy graph: logits = the mean of each colour channel -----------------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 210)}


def _toy_graph(path: Path, card: str | None = "default", batch: int | str = "batch") -> Path:
    """A graph that scores an image by its mean red, green and blue, carrying a card naming those classes."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])],
        "toy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    if card == "default":
        pre = {
            "input_size": [3, 8, 8],
            "mean": [0, 0, 0],
            "std": [0.05, 0.05, 0.05],
            "crop_pct": 1.0,
            "interpolation": "bilinear",
        }
        card = json.dumps({**CIFAR10_CARD, "preprocessing": pre, "class_names": list(COLOURS)})
    if card is not None:
        helper.set_model_props(model, {"s2mlpv2.card": card})
    onnx.save(model, str(path))
    return path


@pytest.fixture
def colour_images(tmp_path) -> dict[str, Path]:
    """One 16x12 image per colour, named for its class, in JPEG and PNG."""
    from PIL import Image

    paths = {}
    for (name, colour), suffix in zip(COLOURS.items(), [".png", ".jpg", ".png"]):
        paths[name] = tmp_path / f"{name}{suffix}"
        Image.new("RGB", (16, 12), colour).save(paths[name])
    return paths


def test_one_line_per_image_with_its_class_name_and_probability(classify, tmp_path, colour_images):
    proc = classify(_toy_graph(tmp_path / "toy.onnx"), *colour_images.values())
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stdout)
    assert [line[:3] for line in lines] == [[str(p), str(i), name] for i, (name, p) in enumerate(colour_images.items())]
    for line in lines:
        logits = np.array(COLOURS[line[2]]) / 255 / 0.05
        softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert float(line[3]) == pytest.approx(softmax.max(), abs=2e-6)


def test_top_k_prints_k_lines_per_image_most_probable_first(classify, tmp_path, colour_images):
    proc = classify(_toy_graph(tmp_path / "toy.onnx"), colour_images["green"], "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stdout)
    assert [line[2] for line in lines] == ["green", "blue", "red"]  # the image's green 200 > blue 40 > red 30
    probabilities = [float(line[3]) for line in lines]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("batch", ["batch", 4], ids=["dynamic", "static-4"])
def test_batches_of_any_size_give_each_image_its_own_answer_in_order(classify, tmp_path, colour_images, batch):
    images = [colour_images[name] for name in ["blue", "red", "green", "green", "red", "blue", "red"]]
    graph = _toy_graph(tmp_path / "toy.onnx", batch=batch)
    args = ["--batch", "2"] if batch == "batch" else []
    proc = classify(graph, *images, *args)
    assert proc.returncode == 0, proc.stderr
    assert [line[0] for line in _lines(proc.stdout)] == [str(p) for p in images]
    assert [line[2] for line in _lines(proc.stdout)] == [p.stem for p in images]


def test_a_missing_or_undecodable_image_is_reported_and_the_others_classified(classify, tmp_path, colour_images):
    (tmp_path / "notes.jpg").write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(colour_images["green"].read_bytes()[:200])
    asked = [colour_images["red"], tmp_path / "absent.png", tmp_path / "notes.jpg", truncated, colour_images["blue"]]
    proc = classify(_toy_graph(tmp_path / "toy.onnx"), *asked)
    assert proc.returncode == 1
    assert [line[2] for line in _lines(proc.stdout)] == ["red", "blue"]
    errors = proc.stderr.splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "absent.png: no such file" in errors[0]
    assert "notes.jpg: not a readable image" in errors[1]
    assert "truncated.jpg: corrupt or truncated image" in errors[2]


def _garbage(folder: Path) -> Path:
    (folder / "garbage.onnx").write_bytes(b"\x00garbage" * 10)
    return folder / "garbage.onnx"


def _garbage_ir(folder: Path) -> Path:
    (folder / "model.xml").write_text("<net name='x'><layers>")
    return folder / "model.xml"


def _foreign(folder: Path) -> Path:
    (folder / "notes.txt").write_text("not a model")
    return folder / "notes.txt"


UNLOADABLE = {
    "absent": (lambda folder: folder / "absent.onnx", "no such model file or build directory"),
    "garbage": (_garbage, "garbage.onnx is not a readable ONNX file"),
    "garbage-ir": (_garbage_ir, "OpenVINO cannot load"),
    "no-card": (lambda folder: _toy_graph(folder / "m.onnx", card=None), "carries no model card"),
    "unparsable-card": (
        lambda folder: _toy_graph(folder / "m.onnx", card='{"format": "s2mlpv2-card/1"'),
        "is not a valid S2-MLPv2 model card",
    ),
    "card-without-preprocessing": (
        lambda folder: _toy_graph(folder / "m.onnx", card=json.dumps({"format": "s2mlpv2-card/1", "model": "x"})),
        "preprocessing",
    ),
    "empty-build-dir": (
        lambda folder: folder,
        "holds no package.json, so it is not a build directory; make one with python build_engine.py",
    ),
    "foreign-file": (_foreign, "not a model this program runs"),
}


@pytest.mark.parametrize("make, expected", UNLOADABLE.values(), ids=UNLOADABLE.keys())
def test_a_model_or_card_it_cannot_load_is_one_line_and_exit_2(classify, tmp_path, colour_images, make, expected):
    models = tmp_path / "models"
    models.mkdir()
    proc = classify(make(models), colour_images["red"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ") and expected in proc.stderr, proc.stderr


def test_a_plan_without_a_runnable_tensorrt_is_refused_in_one_line(classify, tmp_path, colour_images):
    """Here TensorRT's library or a GPU is missing; where both are present the fake plan fails to deserialize instead."""
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan")
    proc = classify(plan, colour_images["red"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "TensorRT" in proc.stderr, proc.stderr


def test_bad_arguments_print_usage_and_exit_2(classify, tmp_path, colour_images):
    for args in [
        [],
        [tmp_path],
        [_toy_graph(tmp_path / "toy.onnx"), colour_images["red"], "--top-k", "0"],
        ["--frobnicate", "x"],
    ]:
        proc = classify(*args)
        assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("error: "), args


# ---- the CIFAR-10 checkpoint's graphs: build directories and agreement with Python -------------


def test_an_ir_runs_with_the_precision_hint_its_sidecar_records(classify, tmp_path, colour_images):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(_toy_graph(tmp_path / "toy.onnx")))
    ov.save_model(model, str(tmp_path / "model.xml"), compress_to_fp16=False)
    (tmp_path / "model.openvino.json").write_text(json.dumps({"inference_precision_hint": "bf16"}))
    # what the CPU computes in when asked for bf16 (the plugin substitutes a hint it does not support)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    expected = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    from_sidecar = classify(tmp_path / "model.xml", colour_images["red"], "--verbose")
    assert from_sidecar.returncode == 0 and f"on CPU ({expected})" in from_sidecar.stderr, from_sidecar.stderr
    asked = classify(tmp_path / "model.xml", colour_images["red"], "--verbose", "--inference-precision", "f32")
    assert asked.returncode == 0 and "on CPU (f32)" in asked.stderr, asked.stderr


def _answers(lines: list[list[str]]) -> dict[str, tuple[int, str]]:
    """(top-1 index, label) by resolved image path, from s2mlpv2_classify's lines."""
    return {str(Path(line[0]).resolve()): (int(line[1]), line[2]) for line in lines}


def python_answers(model: Path, folder: Path) -> dict[str, tuple[int, str]]:
    """Python's (top-1 index, label) by resolved image path: ``python -m pipeline.classify MODEL FOLDER --json``."""
    command = [sys.executable, "-m", "pipeline.classify", str(model), str(folder), "--json", "--top-k", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {str(Path(o["image"]).resolve()): (o["top"][0]["index"], o["top"][0]["label"]) for o in json.loads(proc.stdout)}


def _linked_copy(build: Path, folder: Path) -> Path:
    """A build directory whose files are links to ``build``'s, to add files to."""
    folder.mkdir()
    for file in build.iterdir():
        (folder / file.name).symlink_to(file)
    return folder


def test_a_build_directory_runs_what_its_package_names_the_recorded_cpu_route_else_the_ir_then_the_portable_graph(
    classify, shipped_fp16_build, tmp_path
):
    from deployment.deployed import choose_artifact
    from engines.package import Package

    images = sorted(VERIFY.rglob("*.jpg"))[::50]
    package = Package.read(shipped_fp16_build)
    assert choose_artifact(shipped_fp16_build).artifact.name == package.cpu_route  # the file Python runs
    route = classify(shipped_fp16_build, *images, "--verbose")
    assert route.returncode == 0 and package.cpu_route in route.stderr, route.stderr

    def edited(change) -> Path:
        build = tmp_path / f"build-{len(list(tmp_path.iterdir()))}"
        _linked_copy(shipped_fp16_build, build)
        data = json.loads((shipped_fp16_build / "package.json").read_text())
        change(data)
        (build / "package.json").unlink()
        (build / "package.json").write_text(json.dumps(data))
        return build

    def no_cpu_route(d):
        d["cpu_route"] = None

    from_ir = classify(edited(no_cpu_route), *images, "--verbose")
    assert from_ir.returncode == 0 and "model.xml" in from_ir.stderr, from_ir.stderr

    def graph_only(d):
        d["cpu_route"] = None
        d["routes"] = [r for r in d["routes"] if r["runtime"] != "openvino"]

    from_graph = classify(edited(graph_only), *images, "--verbose")
    assert from_graph.returncode == 0 and package.graph in from_graph.stderr, from_graph.stderr
    assert [line[:3] for line in _lines(from_ir.stdout)] == [line[:3] for line in _lines(from_graph.stdout)]


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: d.update(version=99), "package.json is s2mlpv2-package version 99, newer than the version 1"),
        (lambda d: d.update(schema="something-else"), "is not an s2mlpv2-package file"),
        (lambda d: d.update(routes=[{**r, "files": ["gone.bin"]} for r in d["routes"]], graph=None), "lacks gone.bin, which its"),
    ],
    ids=["newer", "foreign", "incomplete"],
)
def test_a_package_it_cannot_read_is_one_line_naming_why_and_exit_2(classify, shipped_fp16_build, tmp_path, change, expected):
    build = _linked_copy(shipped_fp16_build, tmp_path / "build")
    data = json.loads((shipped_fp16_build / "package.json").read_text())
    change(data)
    (build / "package.json").unlink()
    (build / "package.json").write_text(json.dumps(data))
    proc = classify(build, next(VERIFY.rglob("*.jpg")))
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_plan_s_card_comes_from_its_sidecar_else_from_the_graph_beside_it(cpp_build, shipped_fp16_build, tmp_path):
    """What the TensorRT backend preprocesses with; checked through s2mlpv2_preprocess, which needs no GPU."""
    image = next(VERIFY.rglob("*.jpg"))
    _, from_graph = _preprocess_cpp(cpp_build, shipped_fp16_build / "model-fp16.onnx", image, tmp_path)
    sidecar = json.loads((shipped_fp16_build / "model.json").read_text())
    assert sidecar["card"]["preprocessing"] == CIFAR10_CARD["preprocessing"]
    _, from_sidecar = _preprocess_cpp(cpp_build, shipped_fp16_build / "model.plan", image, tmp_path)
    np.testing.assert_array_equal(from_sidecar, from_graph)

    build = _linked_copy(shipped_fp16_build, tmp_path / "build")
    (build / "model.json").unlink()
    (build / "model.json").write_text(json.dumps({**sidecar, "card": None}))
    _, from_beside = _preprocess_cpp(cpp_build, build / "model.plan", image, tmp_path)
    np.testing.assert_array_equal(from_beside, from_graph)


@pytest.mark.parametrize("model", ["fp32 graph", "fp16 build directory"])
def test_top1_agrees_with_python_on_the_500_bundled_images(classify, graphs, shipped_fp16_build, model):
    model_path = graphs.get("cifar10") if model == "fp32 graph" else shipped_fp16_build
    proc = classify(model_path, VERIFY)
    assert proc.returncode == 0, proc.stderr
    cpp = _answers(_lines(proc.stdout))
    python = python_answers(model_path, VERIFY)
    assert len(python) == 500 and cpp.keys() == python.keys()
    agreement = np.mean([cpp[p][0] == python[p][0] for p in python])
    accuracy_cpp = np.mean([label == Path(p).parent.name for p, (_, label) in cpp.items()])
    accuracy_python = np.mean([label == Path(p).parent.name for p, (_, label) in python.items()])
    print(f"{model}: top-1 agreement {agreement:.2%}, accuracy C++ {accuracy_cpp:.2%}, Python {accuracy_python:.2%}")
    assert agreement >= 0.99
    assert abs(accuracy_cpp - accuracy_python) <= 0.005


MATRIX = [(b, p) for b in ("auto", "onnxruntime", "openvino", "tensorrt-rtx") for p in ("fp32", "fp16", "int8")]


@pytest.mark.parametrize("backend,precision", MATRIX, ids=[f"{b}-{p}" for b, p in MATRIX])
def test_every_build_opens_in_cpp_with_python_s_top1(classify, package_matrix, backend, precision):
    """The C++ program opens what the package names (never ONNX Runtime's own model.ort.onnx) and agrees with Python.

    The tiny model has random weights, so some images' top two classes are within rounding of each other: top-1 is
    compared where Python's top two probabilities differ by more than 1e-3.
    """
    build = package_matrix.build(backend, precision)
    folder = VERIFY / "cat"
    proc = classify(build, folder, "--top-k", "1", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert "model.ort.onnx" not in proc.stderr
    cpp = _answers(_lines(proc.stdout))
    command = [sys.executable, "-m", "pipeline.classify", str(build), str(folder), "--json", "--top-k", "2"]
    answers = json.loads(subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, check=True).stdout)
    clear = {
        str(Path(a["image"]).resolve()): a["top"][0]["index"]
        for a in answers
        if a["top"][0]["probability"] - a["top"][1]["probability"] > 1e-3
    }
    assert len(cpp) == len(answers) and len(clear) > len(answers) // 2
    assert {path: cpp[path][0] for path in clear} == clear
