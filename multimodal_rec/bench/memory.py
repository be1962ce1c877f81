"""Memory of a running server (a process and its descendants) and of a bundle's arrays on disk (``bench serve``).

Issue 18 asks that workers share the memory-mapped index and embeddings: the RSS of N workers should stay within one
bundle + N x the model. RSS counts a shared page in every process that maps it; PSS splits it between them, so the
total PSS of the tree is what the machine really spends. Both come from ``/proc/PID/smaps_rollup`` (Linux 4.14+);
elsewhere :func:`server_memory` says why there is no figure instead of failing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from multimodal_rec.bundle import index_file_names, read_manifest
from multimodal_rec.model.checkpoint import WEIGHTS_FILE

LOG = logging.getLogger(__name__)
PROC = Path("/proc")
MIB = 1 << 20


def _mib(n_bytes: float) -> float:
    return round(n_bytes / MIB, 1)


def _parent_of(pid: int) -> int:
    """The parent pid, from ``/proc/PID/stat`` (fields after the command name, which may hold spaces or ``)``)."""
    stat = (PROC / str(pid) / "stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children and so on (parents before their children), from every process's parent in
    ``/proc/*/stat``: ``/proc/PID/task/*/children`` needs a kernel option that not every kernel has."""
    children: dict[int, list[int]] = {}
    for d in PROC.iterdir():
        if d.name.isdigit():
            try:
                children.setdefault(_parent_of(int(d.name)), []).append(int(d.name))
            except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
                continue
    out, todo = [], [pid]
    while todo:
        kids = sorted(children.get(todo.pop(0), []))
        out += kids
        todo += kids
    return out


def command(pid: int, width: int = 70) -> str:
    """The command line of ``pid`` (program base name, then its arguments), cut to ``width`` characters: tells a
    uvicorn worker (``multiprocessing.spawn``) from the resource tracker and the supervisor."""
    argv = (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    text = " ".join(" ".join([Path(argv[0]).name, *argv[1:]]).split())  # one line
    return text if len(text) <= width else text[: width - 3] + "..."


def rss_pss_mib(pid: int) -> dict[str, float]:
    """``{"rss_mib", "pss_mib", "private_mib"}`` of one process, from ``/proc/PID/smaps_rollup`` (ValueError when
    it lacks them). ``private_mib`` (USS: Private_Clean + Private_Dirty) is what the process alone holds: what
    stopping it would free."""
    kb: dict[str, int] = {}
    for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
            kb[key] = int(rest.split()[0])  # the file counts kB
    if len(kb) != 4:
        raise ValueError(f"no Rss / Pss / Private_* in /proc/{pid}/smaps_rollup")
    mib = lambda n: round(n / 1024, 1)  # noqa: E731
    return {
        "rss_mib": mib(kb["Rss"]),
        "pss_mib": mib(kb["Pss"]),
        "private_mib": mib(kb["Private_Clean"] + kb["Private_Dirty"]),
    }


def tree_memory(pid: int) -> dict[str, Any]:
    """RSS and PSS (MiB) of ``pid`` and each of its descendants (with its :func:`command`), and their sums. A
    descendant that exits meanwhile is left out; OSError / ValueError when ``pid`` itself cannot be read."""
    procs = []
    for p in [pid, *descendants(pid)]:
        try:
            procs.append({"pid": p, "command": command(p), **rss_pss_mib(p)})
        except (OSError, ValueError):
            if p == pid:
                raise
    return {
        "processes": procs,
        "total_rss_mib": round(sum(p["rss_mib"] for p in procs), 1),
        "total_pss_mib": round(sum(p["pss_mib"] for p in procs), 1),
        "total_private_mib": round(sum(p["private_mib"] for p in procs), 1),
    }


def bundle_sizes(bundle: str | Path) -> dict[str, Any]:
    """Bytes on disk of what a worker memory-maps and could share (the index files, every ``.npy``: embeddings, text
    features...) and of the model weights, which each worker holds in its own memory."""
    bundle = Path(bundle)
    names = {*index_file_names(read_manifest(bundle, verify=False)), *(p.name for p in bundle.glob("*.faiss"))}
    files = {n: (bundle / n).stat().st_size for n in sorted(names | {p.name for p in bundle.glob("*.npy")})}
    weights = bundle / WEIGHTS_FILE
    return {
        "array_files": files,
        "arrays_mib": _mib(sum(files.values())),
        "model_mib": _mib(weights.stat().st_size) if weights.is_file() else None,
    }


def server_memory(pid: int, bundle: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """(:func:`tree_memory` of ``pid`` with :func:`bundle_sizes` under ``bundle``, None), or (None, one line saying
    why there is no figure: not Linux, or ``/proc`` unreadable)."""
    try:
        mem = tree_memory(pid)
    except (OSError, ValueError) as e:
        note = f"server memory not measured: /proc/{pid}/smaps_rollup is unreadable ({type(e).__name__}; Linux only)"
        LOG.warning(note)
        return None, note
    return {**mem, "bundle": bundle_sizes(bundle)}, None


def format_memory(mem: dict[str, Any] | None, note: str | None, workers: int) -> list[str]:
    """Text lines of :func:`server_memory`'s answer for ``bench serve``."""
    if mem is None:
        return [note or "server memory not measured"]
    b = mem["bundle"]
    model = f", model weights {b['model_mib']:.1f} MiB" if b["model_mib"] is not None else ""
    lines = [
        f"server memory after the load (--workers {workers}: {len(mem['processes'])} processes): "
        f"PSS {mem['total_pss_mib']:.1f} MiB, RSS {mem['total_rss_mib']:.1f} MiB, private "
        f"{mem['total_private_mib']:.1f} MiB summed; "
        f"bundle arrays {b['arrays_mib']:.1f} MiB on disk{model}"
    ]
    for p in mem["processes"]:
        lines.append(
            f"  pid {p['pid']:<8} RSS {p['rss_mib']:>8.1f} MiB  PSS {p['pss_mib']:>8.1f} MiB  "
            f"private {p['private_mib']:>8.1f} MiB  {p['command']}"
        )
    return lines
