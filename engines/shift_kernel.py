"""The spatial shift as a Triton kernel: ``spatial_shift(x, pattern)`` on NHWC tensors.

This is the kernel TensorRT 11's plugin compiles ahead of time (``engines.plugin``) and TensorRT
for RTX's plugin launches from Python (``engines.plugin_rtx``, through :func:`shift_into`). Each
output element reads one input element: the source row and column are the output's, moved
by the quarter's direction and clamped to the edge, which is the paper's border rule (the row
or column without a source keeps its own value; docs/ARCHITECTURE.md). It is correct for any C divisible by 4.

On a machine without a GPU it runs under ``TRITON_INTERPRET=1`` on CPU tensors (slowly; for
correctness tests only).
"""

from __future__ import annotations

import os

import torch

__all__ = ["spatial_shift", "shift_into", "shift_kernel", "compile_ptx", "block_config", "launch_grid", "NUM_WARPS"]

NUM_WARPS = 8  # measured best with (16, 64) tiles on an H200; see pipeline.gpu_check

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    triton = None
    tl = None


if triton is not None:

    @triton.jit
    def shift_kernel(x_ptr, n_pix, H, W, Cq, y_ptr, PATTERN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # Argument order is TensorRT's for AOT plugins: inputs, then scalar arguments, then outputs.
        # One program writes BLOCK_P whole output pixels: a (pixel, quarter, channel) tile per
        # step of BLOCK_C channels. Within a quarter every channel moves the same way, so each
        # (pixel, quarter) source is one contiguous run of channels: vector loads and stores
        # when Cq is a multiple of 16, and all four quarters' loads are in flight at once.
        p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
        in_range = p < n_pix
        w = p % W
        h = (p // W) % H
        b = p // (H * W)
        C = 4 * Cq
        quarter = tl.arange(0, 4)
        # The source is one step against the move: "+1 along D1" means y[h] = x[h - 1].
        first = tl.where(quarter == 0, -1, tl.where(quarter == 1, 1, 0))
        second = tl.where(quarter == 2, -1, tl.where(quarter == 3, 1, 0))
        if PATTERN == 1:
            dh = first
            dw = second
        else:
            dh = second
            dw = first
        hs = tl.minimum(tl.maximum(h[:, None] + dh[None, :], 0), H - 1)
        ws = tl.minimum(tl.maximum(w[:, None] + dw[None, :], 0), W - 1)
        offset = (quarter * Cq)[None, :]
        src = ((b[:, None] * H + hs) * W + ws) * C + offset  # (BLOCK_P, 4)
        dst = (p * C)[:, None] + offset
        for c0 in range(0, Cq, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            mask = in_range[:, None, None] & (cc < Cq)[None, None, :]
            values = tl.load(x_ptr + src[:, :, None] + cc[None, None, :], mask=mask)
            tl.store(y_ptr + dst[:, :, None] + cc[None, None, :], values, mask=mask)

else:  # pragma: no cover
    shift_kernel = None


def block_config(quarter_channels: int) -> tuple[int, int, int]:
    """``(BLOCK_P, BLOCK_C, num_warps)`` for a quarter of ``quarter_channels`` channels.

    BLOCK_C covers the quarter in one step where it can (up to 64 channels, rounded up to a
    power of two); BLOCK_P makes a step move 4,096 elements (BLOCK_P x 4 quarters x BLOCK_C).
    """
    block_c = 1
    while block_c < min(quarter_channels, 64):
        block_c *= 2
    return 1024 // block_c, block_c, NUM_WARPS


def launch_grid(n_pix: int, block_p: int) -> tuple[int]:
    """One program per ``block_p`` pixels; each writes all of their channels."""
    return ((n_pix + block_p - 1) // block_p,)


def spatial_shift(x: torch.Tensor, pattern: int, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Shift NHWC ``x`` with the Triton kernel (pattern 1 = SS1, 2 = SS2). Returns a new tensor.

    ``config`` overrides :func:`block_config`'s ``(BLOCK_P, BLOCK_C, num_warps)``; the GPU check
    uses it to time the alternatives.
    """
    if x.dim() != 4:
        raise ValueError(f"spatial shift expects an NHWC tensor, got shape {tuple(x.shape)}")
    x = x.contiguous()
    y = torch.empty_like(x)
    shift_into(x, y, pattern, config)
    return y


def shift_into(x: torch.Tensor, y: torch.Tensor, pattern: int, config: tuple[int, int, int] | None = None) -> None:
    """Write the shift of contiguous NHWC ``x`` into ``y`` (same shape and dtype), on the current stream.

    The TensorRT for RTX plugin calls this on TensorRT's own buffers (``engines.plugin_rtx``).
    """
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
    if y.shape != x.shape or y.dtype != x.dtype or not (x.is_contiguous() and y.is_contiguous()):
        raise ValueError("shift_into needs contiguous input and output of the same shape and dtype")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton shift kernel needs a CUDA tensor; on the CPU set TRITON_INTERPRET=1 (slow, for tests)")
    n_pix = b * h * w
    if n_pix and c:
        block_p, block_c, warps = config or block_config(c // 4)
        shift_kernel[launch_grid(n_pix, block_p)](
            x, n_pix, h, w, c // 4, y, PATTERN=pattern, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps
        )


def compile_ptx(dtype: str, pattern: int, channels: int, arch: int = 90) -> tuple[str, str, int, int]:
    """Compile the kernel ahead of time: ``(kernel name, PTX, threads per block, shared bytes)``.

    ``dtype`` is ``"fp32"`` or ``"fp16"``; ``channels`` the input's C, which sets the block shape
    (:func:`block_config`) and, when C/4 is a multiple of 16, lets the compiler assume so (vector
    loads); ``arch`` the compute capability (80, 86, 89, 90, ...).
    Needs no GPU: Triton lowers to PTX on the host. The TensorRT plugin stores this PTX in the
    engine, so the engine runs without Python or a plugin library.
    """
    if triton is None:
        raise RuntimeError("compiling the shift kernel needs the 'triton' package (pip install triton)")
    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"dtype must be 'fp32' or 'fp16', got {dtype!r}")
    if pattern not in (1, 2):
        raise ValueError(f"shift pattern must be 1 or 2, got {pattern!r}")
    if channels <= 0 or channels % 4:
        raise ValueError(f"spatial shift splits channels into 4 equal groups, so C must be divisible by 4; got C={channels}")
    from triton.backends.compiler import GPUTarget

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 is set: the interpreter cannot compile kernels; unset it to compile PTX")
    pointer = f"*{dtype}"
    signature = {
        "x_ptr": pointer,
        "n_pix": "i32",
        "H": "i32",
        "W": "i32",
        "Cq": "i32",
        "y_ptr": pointer,
        "PATTERN": "constexpr",
        "BLOCK_P": "constexpr",
        "BLOCK_C": "constexpr",
    }
    block_p, block_c, warps = block_config(channels // 4)
    constants = {"PATTERN": pattern, "BLOCK_P": block_p, "BLOCK_C": block_c}
    # TensorRT's tensors are 256-byte aligned, so both pointers may be assumed multiples of 16.
    aligned = [0, 5] + ([4] if channels // 4 % 16 == 0 else [])
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    source = triton.compiler.ASTSource(fn=shift_kernel, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    return compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.num_warps * 32, compiled.metadata.shared
