"""The spatial shift as a Triton kernel: ``spatial_shift(x, pattern)`` on NHWC tensors.

This is the kernel the TensorRT plugin compiles ahead of time (``engines.plugin``). Each
output element reads one input element: the source row and column are the output's, moved
by the quarter's direction and clamped to the edge, which is SPEC §1's border rule (the row
or column without a source keeps its own value). It is correct for any C divisible by 4.

On a machine without a GPU it runs under ``TRITON_INTERPRET=1`` on CPU tensors (slowly; for
correctness tests only).
"""

from __future__ import annotations

import os

import torch

__all__ = ["spatial_shift", "shift_kernel", "compile_ptx", "BLOCK_P", "BLOCK_C", "NUM_WARPS", "launch_grid"]

BLOCK_P = 32  # pixels per program
BLOCK_C = 64  # channels per program
NUM_WARPS = 4

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    triton = None
    tl = None


if triton is not None:

    @triton.jit
    def shift_kernel(x_ptr, n_pix, H, W, C, y_ptr, PATTERN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # Argument order is TensorRT's for AOT plugins: inputs, then scalar arguments, then outputs.
        pid_p = tl.program_id(0)
        pid_c = tl.program_id(1)
        p = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        quarter = c // (C // 4)
        # The source is one step against the move: "+1 along D1" means y[h] = x[h - 1].
        first = tl.where(quarter == 0, -1, tl.where(quarter == 1, 1, 0))
        second = tl.where(quarter == 2, -1, tl.where(quarter == 3, 1, 0))
        if PATTERN == 1:
            dh = first
            dw = second
        else:
            dh = second
            dw = first
        w = p % W
        h = (p // W) % H
        b = p // (H * W)
        hs = tl.minimum(tl.maximum(h[:, None] + dh[None, :], 0), H - 1)
        ws = tl.minimum(tl.maximum(w[:, None] + dw[None, :], 0), W - 1)
        src = ((b[:, None] * H + hs) * W + ws) * C + c[None, :]
        mask = (p < n_pix)[:, None] & (c < C)[None, :]
        values = tl.load(x_ptr + src, mask=mask)
        tl.store(y_ptr + p[:, None] * C + c[None, :], values, mask=mask)

else:  # pragma: no cover
    shift_kernel = None


def launch_grid(n_pix: int, channels: int) -> tuple[int, int]:
    return ((n_pix + BLOCK_P - 1) // BLOCK_P, (channels + BLOCK_C - 1) // BLOCK_C)


def spatial_shift(x: torch.Tensor, pattern: int) -> torch.Tensor:
    """Shift NHWC ``x`` with the Triton kernel (pattern 1 = SS1, 2 = SS2). Returns a new tensor."""
    if shift_kernel is None:
        raise RuntimeError("the Triton shift kernel needs the 'triton' package (pip install triton)")
    if pattern not in (1, 2):
        raise ValueError(f"shift pattern must be 1 or 2, got {pattern!r}")
    if x.dim() != 4:
        raise ValueError(f"spatial shift expects an NHWC tensor, got shape {tuple(x.shape)}")
    b, h, w, c = x.shape
    if c % 4:
        raise ValueError(f"spatial shift splits channels into 4 equal groups, so C must be divisible by 4; got C={c}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"spatial shift supports float32, float16 and bfloat16, got {x.dtype}")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton shift kernel needs a CUDA tensor; on the CPU set TRITON_INTERPRET=1 (slow, for tests)")
    x = x.contiguous()
    y = torch.empty_like(x)
    n_pix = b * h * w
    if n_pix and c:
        shift_kernel[launch_grid(n_pix, c)](
            x, n_pix, h, w, c, y, PATTERN=pattern, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS
        )
    return y


def compile_ptx(dtype: str, pattern: int, arch: int = 90) -> tuple[str, str, int, int]:
    """Compile the kernel ahead of time: ``(kernel name, PTX, threads per block, shared bytes)``.

    ``dtype`` is ``"fp32"`` or ``"fp16"``; ``arch`` the compute capability (80, 86, 89, 90, ...).
    Needs no GPU: Triton lowers to PTX on the host. The TensorRT plugin stores this PTX in the
    engine, so the engine runs without Python or a plugin library.
    """
    if triton is None:
        raise RuntimeError("compiling the shift kernel needs the 'triton' package (pip install triton)")
    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"dtype must be 'fp32' or 'fp16', got {dtype!r}")
    if pattern not in (1, 2):
        raise ValueError(f"shift pattern must be 1 or 2, got {pattern!r}")
    from triton.backends.compiler import GPUTarget

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 is set: the interpreter cannot compile kernels; unset it to compile PTX")
    pointer = f"*{dtype}"
    signature = {
        "x_ptr": pointer,
        "n_pix": "i32",
        "H": "i32",
        "W": "i32",
        "C": "i32",
        "y_ptr": pointer,
        "PATTERN": "constexpr",
        "BLOCK_P": "constexpr",
        "BLOCK_C": "constexpr",
    }
    constants = {"PATTERN": pattern, "BLOCK_P": BLOCK_P, "BLOCK_C": BLOCK_C}
    source = triton.compiler.ASTSource(fn=shift_kernel, signature=signature, constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": NUM_WARPS})
    return compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.num_warps * 32, compiled.metadata.shared
