import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

# Keep CPU tests predictable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Triton kernels run on the CPU through Triton's interpreter (set before triton is imported).
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def run_cli(tmp_path):
    """Run ``python -m MODULE args`` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    def _run(module: str, *args: str, check: bool = False, timeout: float = 600, env: dict | None = None, cwd=None):
        proc = subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or ROOT,
            env={**os.environ, **(env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{module} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    return _run


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """A small ImageFolder tree whose classes differ by colour, so a model can learn them quickly."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 220, 40), (200, 50, 200)]
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(palette[c % len(palette)], dtype=np.float32)
            img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root
