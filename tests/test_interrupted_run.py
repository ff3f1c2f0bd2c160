"""A run killed (SIGKILL) at any stage leaves the user's store as it was, once the next run has started.

The child process runs ``soscope.enhance`` on a store that already holds an earlier run's outputs (so the
commit has old elements to move aside). A wrapper around one internal step prints the stage's name and
then blocks on standard input: the test kills the child as soon as it reads that line, so the kill lands
exactly at the named stage (no sleeps, no timing assumptions).
"""

import shutil
import signal
import subprocess
import sys

import pytest
import spatialdata as sd
from store_helpers import tree_digest

import soscope
from soscope.datasets import synthetic
from soscope.io import recover_store
from soscope.io._write import TMP_PREFIX

ENHANCE = (
    "soscope.enhance(sdata, table='table', epochs=1, progress=False, n_hidden=16, n_latent=4, device='cpu')"
)

CHILD = f"""
import os, sys, functools
import spatialdata as sd, soscope, torch
torch.set_num_threads(1)

def pause(stage):
    print("stage:" + stage, flush=True)
    sys.stdin.readline()  # the parent kills this process before it writes anything
    raise SystemExit("the parent should have killed this process at " + stage)

def after(owner, name, stage, calls=1):
    original = getattr(owner, name)
    seen = [0]
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        seen[0] += 1
        if seen[0] == calls:
            pause(stage)
        return out
    setattr(owner, name, wrapper)

stage = sys.argv[2]
import soscope.io as sio, soscope.io._write as w, soscope.module as module
if stage == "setup":
    after(sio.SelectionRequest, "select", stage)  # elements chosen, nothing converted yet
elif stage == "training":
    after(module.SoScopeModule, "loss", stage)  # inside the training loop
elif stage == "staged":
    after(w, "_stage", stage)  # results written into the staging folder, store untouched
elif stage.startswith("rename"):
    # the k-th rename of an element during the commit (odd: an old output moved aside; even: a new one
    # moved into place)
    k = int(stage.split(":")[1])
    original_replace = os.replace
    count = [0]
    def replace(src, dst):
        original_replace(src, dst)
        if "{TMP_PREFIX}" in str(src) + str(dst) and not str(dst).endswith(".json"):
            count[0] += 1
            if count[0] == k:
                pause(stage)
    os.replace = replace
elif stage == "consolidate":
    original_consolidate = w._consolidate
    def consolidate(*args):
        pause(stage)  # every element renamed, metadata not yet consolidated
    w._consolidate = consolidate
sdata = sd.read_zarr(sys.argv[1])
{ENHANCE}
print("finished", flush=True)
"""

STAGES = ["setup", "training", "staged", "rename:1", "rename:2", "rename:3", "consolidate"]


@pytest.fixture(scope="module")
def store_with_outputs(tmp_path_factory):
    """Return a store holding the data and an earlier run's outputs (``spots_soscope``, ``table_soscope``)."""
    path = tmp_path_factory.mktemp("prev") / "s.zarr"
    synthetic(n_spots=120, n_features=20, seed=0).write(path)
    sdata = sd.read_zarr(path)
    soscope.enhance(sdata, table="table", epochs=1, progress=False, n_hidden=16, n_latent=4, device="cpu")
    return path


def _kill_at(store, stage: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), stage],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # every line the child prints until the stage is reached
            lines.append(line.strip())
            if line.strip() == f"stage:{stage}":
                break
        assert lines and lines[-1] == f"stage:{stage}", f"the run never reached {stage}: {lines}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_at_any_stage_leaves_store_as_it_was(store_with_outputs, tmp_path, stage):
    store = tmp_path / "s.zarr"
    shutil.copytree(store_with_outputs, store)
    before = tree_digest(store)
    _kill_at(store, stage)
    litter = [p.name for p in store.glob(f"{TMP_PREFIX}*")]
    if stage in ("setup", "training"):
        assert tree_digest(store) == before and not litter  # nothing was written yet
    else:
        assert litter, f"a kill at {stage} should leave the staging folder for the next run to undo"
    # the next run starts by undoing what the killed one left (here its set-up alone, no training)
    soscope.SoScope(sd.read_zarr(store), table="table", progress=False)
    assert tree_digest(store) == before, f"the store differs from before the run killed at {stage}"
    back = sd.read_zarr(store)
    assert {"table", "truth", "table_soscope"} == set(back.tables)
    assert "spots_soscope" in back.shapes


def test_recover_store_leaves_running_runs_alone(tmp_path):
    """A temporary folder owned by a live process is not touched; one of a gone process is removed."""
    import json
    import os
    import socket

    store = tmp_path / "s.zarr"
    store.mkdir()
    live = store / f"{TMP_PREFIX}live"
    gone = store / f"{TMP_PREFIX}gone"
    for folder, pid in ((live, os.getpid()), (gone, _dead_pid())):
        (folder / "staged.zarr").mkdir(parents=True)
        (folder / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
    assert recover_store(store) == [gone.name]
    assert live.is_dir() and not gone.exists()


def _dead_pid() -> int:
    """Return the id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
