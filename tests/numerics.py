"""Tolerances for fp32 comparisons that hold on any x86 CPU kernel set.

Two computations of the same fp32 result differ by rounding that depends on the kernels that
ran: vector width (AVX2 / AVX-512 / AMX machines), blocking and FMA use in oneDNN and ATen, and
the number of threads. That rounding error is proportional to the magnitude of the values that
were accumulated — the scale of the tensor — not to each element: a logit of 0.01 in a row whose
logits reach 30 carries the same absolute error as the 30. So a comparison is made relative to the
scale of the expected tensor, never with a fixed absolute bound (``atol=1e-5, rtol=0`` fails on
some CPUs for logits of magnitude 15–30) and never element-wise relative (meaningless near zero).

``assert_fp32_close(a, b)`` requires ``max|a - b| <= rtol * max(1, max|b|)`` with ``rtol = 1e-5``
(≈ 84 fp32 ulps of the scale): for tensors of magnitude ≤ 1 this is exactly the old
``atol=1e-5`` bound, and it only grows with the scale. The measured margins under
``ATEN_CPU_CAPABILITY=default / avx2 / avx512`` and ``ONEDNN_MAX_CPU_ISA=AVX2`` are in
docs/performance.md ("Numerical tolerances").
"""

from __future__ import annotations

import torch

FP32_RTOL = 1e-5


def fp32_tolerance(expected: torch.Tensor, rtol: float = FP32_RTOL) -> float:
    """The allowed maximum absolute difference from ``expected``: ``rtol * max(1, max|expected|)``."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return rtol * max(1.0, scale)


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = FP32_RTOL) -> None:
    """Assert equal shapes and ``max|actual - expected| <= rtol * max(1, max|expected|)``."""
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all(), "non-finite values"
    diff = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    tol = fp32_tolerance(expected, rtol)
    assert diff <= tol, (
        f"max |difference| {diff:.3g} > {tol:.3g} (rtol {rtol:g} x scale {float(expected.abs().max()):.3g})"
    )
