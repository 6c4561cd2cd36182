"""The cache's decode workers: spawned processes that run this package's code only, never the caller's script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image


def test_a_script_without_a_main_guard_decodes_with_workers(tmp_path):
    """A script that decodes at its top level (``da.fit`` with ``dataset.cache=true``, no ``if __name__ ==
    "__main__":``) is not run again inside every spawned worker: it runs once and its decode finishes."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(paths[-1])
    ran, out = tmp_path / "ran.txt", tmp_path / "rows.u8"
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os
            from da.data import cache

            with open({str(ran)!r}, "a") as fh:
                fh.write(f"{{os.getpid()}}\\n")
            cache.POOL_MIN_IMAGES = 1  # workers for a handful of images
            errors = cache.decode_to_file({paths!r}, 4, {str(out)!r}, workers=2)
            print("failures", len(errors))
            """
        )
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["failures", "0"]
    assert len(ran.read_text().split()) == 1  # the script's top level ran in its own process only
    rows = np.fromfile(out, dtype=np.uint8).reshape(8, 3, 4, 4)
    assert all(rows[i].any() for i in range(8))  # every image decoded into its row
