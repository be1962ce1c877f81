"""``bench serve``'s memory reader (issue 18: RSS / PSS of the server's processes, from /proc)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from multimodal_rec.bench import memory

linux_only = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").is_file(), reason="needs /proc smaps_rollup")


def _vm_rss_mib(pid: int) -> float:
    """VmRSS from /proc/PID/status: another file, another count of the same resident set."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@linux_only
def test_own_process_rss_is_sane() -> None:
    m = memory.tree_memory(os.getpid())
    me = m["processes"][0]
    assert me["pid"] == os.getpid() and "python" in me["command"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    assert 20 < me["rss_mib"] <= peak + 1  # python + numpy + torch: tens of MiB at least; never above the peak
    assert me["rss_mib"] == pytest.approx(_vm_rss_mib(os.getpid()), rel=0.1)
    assert 0 < me["pss_mib"] <= me["rss_mib"]
    assert 0 < me["private_mib"] <= me["rss_mib"]


@linux_only
def test_a_forked_child_counts_its_parents_pages_as_shared() -> None:
    """What ``mmrec serve --workers N`` relies on: a child forked after its parent filled 200 MiB holds them in its
    RSS but not in its private memory; the pair's PSS counts them once."""
    code = (
        "import os, sys, time, numpy as np; a = np.ones(200 << 20, np.uint8); pid = os.fork()\n"
        "if pid == 0: print(os.getpid(), flush=True); time.sleep(60); os._exit(0)\n"
        "time.sleep(60)"
    )
    with _parent_and_child(code) as (parent, child):
        m = memory.tree_memory(parent)
        mine, kid = m["processes"]
        assert kid["pid"] == child and kid["rss_mib"] > 200 and kid["private_mib"] < 50
        assert m["total_pss_mib"] < mine["rss_mib"] + 50 and m["total_private_mib"] < 150


@contextlib.contextmanager
def _parent_and_child(code: str) -> Iterator[tuple[int, int]]:
    """(pid, child pid) of ``python -c code``, which prints the pid of a child it made; both killed after."""
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline()) if parent.stdout else -1
    try:
        yield parent.pid, child
    finally:
        os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()


@linux_only
def test_a_process_with_a_child_is_summed() -> None:
    """A parent that started a child: both are reported, the totals are their sums, and this test's own
    descendants include the grandchild (children of children are followed)."""
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(c.pid, flush=True); time.sleep(60)"
    )
    with _parent_and_child(code) as (parent, child):
        m = memory.tree_memory(parent)
        assert [p["pid"] for p in m["processes"]] == [parent, child]
        assert "time.sleep(60)" in m["processes"][1]["command"]
        assert all(p["rss_mib"] > 1 for p in m["processes"])
        assert m["total_rss_mib"] == pytest.approx(sum(p["rss_mib"] for p in m["processes"]), abs=0.11)
        assert m["total_pss_mib"] == pytest.approx(sum(p["pss_mib"] for p in m["processes"]), abs=0.11)
        assert m["total_rss_mib"] > m["processes"][0]["rss_mib"]
        assert {parent, child} <= set(memory.descendants(os.getpid()))


def test_unreadable_proc_is_one_line_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "PROC", tmp_path / "no-proc")  # as on macOS or Windows
    mem, note = memory.server_memory(os.getpid(), tmp_path)
    assert mem is None and note and "\n" not in note and "Linux only" in note
    assert memory.format_memory(mem, note, 1) == [note]


def test_bundle_sizes_count_the_shared_arrays(bundle: Path) -> None:
    b = memory.bundle_sizes(bundle)
    assert {"embeddings.npy", "index.faiss"} <= set(b["array_files"])
    assert b["array_files"]["embeddings.npy"] == (bundle / "embeddings.npy").stat().st_size
    assert b["arrays_mib"] == round(sum(b["array_files"].values()) / memory.MIB, 1)
    assert b["model_mib"] > 0 and "model.safetensors" not in b["array_files"]
