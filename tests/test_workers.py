"""Pool workers end with their parent (no orphan keeps writing into run directories)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

PARENT = textwrap.dedent("""
    import multiprocessing as mp, os, sys
    from vlprompt.workers import exit_with_parent

    def child(q):
        exit_with_parent(poll_seconds=0.1)
        q.put(os.getpid())
        import time
        time.sleep(60)

    if __name__ == "__main__":
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        ctx.Process(target=child, args=(q,)).start()
        print(q.get(timeout=60), flush=True)
        os._exit(0)  # killed-like exit: no join, no terminate
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_worker_exits_when_parent_dies(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    deadline = time.time() + 20
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the worker outlived its parent"
