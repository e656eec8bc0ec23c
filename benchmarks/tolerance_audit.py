"""Run the test suite under several CPU kernel dispatches and report every tolerance's margin.

fp32 results differ in their last bits between kernel sets (AVX2 / AVX-512 / AMX machines, oneDNN
vs ATen paths), so a numerical test must hold on any of them. This script runs ``pytest`` once per
setting below, with ``benchmarks/tolaudit_plugin.py`` recording every comparison, and prints:

* per setting: passed / failed counts and the wall time;
* per comparison site (test file:line): the largest fraction of its tolerance that was used under
  any setting (``ratio``; > 1 fails), with the difference and the tensor's scale there.

Settings: the machine's own dispatch, ``ATEN_CPU_CAPABILITY=avx2``, ``ATEN_CPU_CAPABILITY=default``
and ``ONEDNN_MAX_CPU_ISA=AVX2``. Sites whose ratio is large because they assert that two tensors
*differ* (``assert not torch.allclose``) are listed separately.

Usage (repository root; about 5-10 min per setting on 2 cores)::

    .venv/bin/python benchmarks/tolerance_audit.py --out runs/tolerance_audit [-- PYTEST_ARGS...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
}
ROOT = Path(__file__).resolve().parent.parent


def _cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0]
    except (OSError, IndexError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if re.search(rf"\b{f}\b", flags))


def _negated_sites() -> set[str]:
    """``file:line`` of every ``assert not torch.allclose`` / ``not np.allclose`` in the tests."""
    sites = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"not (torch|np)\.allclose", line):
                sites.add(f"{path.name}:{i}")
    return sites


def run_setting(name: str, env_extra: dict[str, str], out: Path, pytest_args: list[str]) -> dict:
    log = out / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, **env_extra, "TOLAUDIT_OUT": str(log),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tolaudit_plugin", "-p", "no:cacheprovider",
                           "-rf", *pytest_args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"setting": name, "env": env_extra, "returncode": proc.returncode, "summary": tail, "failed": failed,
            "seconds": round(seconds, 1), "load_before": load0, "load_after": os.getloadavg()[0], "rows": rows}


def summarise(results: list[dict]) -> str:
    negated = _negated_sites()
    worst: dict[str, tuple[float, dict, str]] = {}
    for res in results:
        for row in res["rows"]:
            site = row["site"]
            if site not in worst or row["ratio"] > worst[site][0]:
                worst[site] = (row["ratio"], row, res["setting"])
    counts = {res["setting"]: len(res["rows"]) for res in results}
    lines = [f"CPU flags: {_cpu_flags()}", "", "| setting | result | comparisons | seconds | load before / after |",
             "|---|---|---|---|---|"]
    for res in results:
        lines.append(f"| {res['setting']} | {res['summary']} | {counts[res['setting']]} | {res['seconds']} | "
                     f"{res['load_before']:.1f} / {res['load_after']:.1f} |")
        lines += [f"|  | {f} | | | |" for f in res["failed"]]
    lines += ["", "Comparison sites by the largest fraction of their tolerance used (any setting):", "",
              "| site | kind | max ratio | max diff | scale | atol | rtol | setting |",
              "|---|---|---|---|---|---|---|---|"]
    ranked = sorted((w for s, w in worst.items() if s not in negated), key=lambda w: -w[0])
    for ratio, row, setting in ranked[:40]:
        lines.append(f"| {row['site']} | {row['kind']} | {ratio:.3f} | {row['maxdiff']:.3g} | {row['scale']:.3g} | "
                     f"{row['atol']:g} | {row['rtol']:g} | {setting} |")
    lines += ["", f"{len(ranked)} sites in all; {sum(1 for w in ranked if w[0] > 1)} above 1, "
              f"{sum(1 for w in ranked if w[0] > 0.5)} above 0.5."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/tolerance_audit")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.settings:
        print(f"running the suite under {name} ...", file=sys.stderr, flush=True)
        results.append(run_setting(name, SETTINGS[name], out, args.pytest_args))
        print(f"  {results[-1]['summary']} ({results[-1]['seconds']} s)", file=sys.stderr, flush=True)
    report = summarise(results)
    (out / "tolerance_audit.md").write_text(report + "\n")
    (out / "tolerance_audit.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "rows"}
                                                          for r in results], indent=2) + "\n")
    print(report)
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
