"""pytest plugin (opt-in): record the margin of every tolerance comparison the tests make.

Loaded by ``benchmarks/tolerance_audit.py`` with ``-p tolaudit_plugin``. It wraps
``torch.allclose``, ``torch.testing.assert_close`` (explicit tolerances), ``np.allclose`` and the
suite's ``numerics.assert_fp32_close`` and appends one JSON line per call to ``$TOLAUDIT_OUT``:
the test file and line, the largest absolute difference, the scale (max |expected|), the
tolerance and ``ratio`` = the largest difference as a fraction of what was allowed (``> 1`` means
the comparison failed; for ``assert not allclose`` checks a large ratio is the point).
"""

from __future__ import annotations

import inspect
import json
import os

import numpy as np
import torch

_OUT = os.environ.get("TOLAUDIT_OUT", "tolaudit.jsonl")
_torch_allclose, _assert_close, _np_allclose = torch.allclose, torch.testing.assert_close, np.allclose


def _site() -> str:
    for frame in inspect.stack()[2:10]:
        if os.sep + "tests" + os.sep in frame.filename and not frame.filename.endswith("numerics.py"):
            return f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return "?"


def _record(actual, expected, rtol: float, atol: float, kind: str, scale_relative: bool = False) -> None:
    try:
        a = torch.as_tensor(np.asarray(actual) if not isinstance(actual, torch.Tensor) else actual)
        b = torch.as_tensor(np.asarray(expected) if not isinstance(expected, torch.Tensor) else expected)
        a, b = torch.broadcast_tensors(a.detach().double().cpu(), b.detach().double().cpu())
    except (TypeError, RuntimeError, ValueError):
        return
    if a.numel() == 0:
        return
    diff = (a - b).abs()
    scale = float(b.abs().max())
    if scale_relative:  # numerics.assert_fp32_close: one bound for the whole tensor
        allowed = torch.full_like(b, rtol * max(1.0, scale))
    else:
        allowed = atol + rtol * b.abs()
    if bool((allowed > 0).all()):
        ratio = float((diff / allowed).max())
    else:
        ratio = float("inf") if float(diff.max()) > 0 else 0.0
    row = {"site": _site(), "kind": kind, "maxdiff": float(diff.max()), "scale": scale, "atol": atol,
           "rtol": rtol, "ratio": ratio}
    with open(_OUT, "a") as f:
        f.write(json.dumps(row) + "\n")


def _allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
    _record(a, b, rtol, atol, "torch.allclose")
    return _torch_allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)


def _np_close(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
    _record(a, b, rtol, atol, "np.allclose")
    return _np_allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)


def _assert_close_wrapped(actual, expected, *args, rtol=None, atol=None, **kwargs):
    if rtol is not None and atol is not None and isinstance(actual, torch.Tensor):
        _record(actual, expected, rtol, atol, "assert_close")
    return _assert_close(actual, expected, *args, rtol=rtol, atol=atol, **kwargs)


torch.allclose = _allclose
torch.testing.assert_close = _assert_close_wrapped
np.allclose = _np_close


def pytest_configure(config) -> None:
    """Wrap ``numerics.assert_fp32_close`` once the tests folder is importable."""
    try:
        import numerics
    except ImportError:
        return
    original = numerics.assert_fp32_close

    def wrapped(actual, expected, rtol=numerics.FP32_RTOL):
        _record(actual, expected, rtol, 0.0, "assert_fp32_close", scale_relative=True)
        return original(actual, expected, rtol)

    numerics.assert_fp32_close = wrapped
