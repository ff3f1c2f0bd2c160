"""A run killed midway (SIGKILL) leaves the user's store readable and as it was."""

import signal
import subprocess
import sys
import time

import pytest
import spatialdata as sd
from store_helpers import tree_digest

from soscope.datasets import synthetic

SCRIPT = """
import sys, spatialdata as sd, soscope
sdata = sd.read_zarr(sys.argv[1])
print("started", flush=True)
soscope.enhance(sdata, table="table", epochs=100000, progress=False)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_midway_leaves_store_unchanged(tmp_path):
    store = tmp_path / "s.zarr"
    synthetic(n_spots=120, n_features=20, seed=0).write(store)
    before = tree_digest(store)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(store)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(4)  # set-up done, training under way
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tree_digest(store) == before
    back = sd.read_zarr(store)
    assert "table_soscope" not in back.tables and "spots_soscope" not in back.shapes
    assert set(back.tables) == {"table", "truth"}
