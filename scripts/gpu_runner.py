"""Running the GPU check's commands: each in its own process group under a timeout inside one time budget,
its output in ``WORKDIR/logs``, and (dry run) its flags checked against the ``--help`` of what it calls.

Used by scripts/gpu_check.py; standard library only, so the driver runs even where the install is broken.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "scripts" / "gpu_probes.py"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Row:
    path: str
    what: str
    figure: str = ""
    status: str = SKIP
    seconds: float | None = None


class StepFailed(Exception):
    """A command failed, timed out or printed nonsense; the message becomes the row's figure."""


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("$ ")]
    return lines[-1][:240] if lines else "(no output)"


def fmt_s(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:02.0f} s" if s >= 60 else f"{s:.0f} s"


class Ctx:
    """Where the run stands: work directory, time budget, sizes (``plan``), mode, what earlier checks produced.

    ``dry``: command lines are validated, only CPU-cheap probes run. ``cpu``: everything runs on the CPU (the dry
    run, and the rehearsal of the GPU run at tiny sizes).
    """

    def __init__(
        self, work: Path, budget_s: float, plan: Any, dry: bool = False, cpu: bool = False, python: str = sys.executable
    ) -> None:
        self.work, self.plan, self.dry, self.cpu = work, plan, dry, cpu or dry
        self.py, self.cores = os.path.abspath(python), cores()
        self.deadline = time.monotonic() + budget_s
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        if self.cpu:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run and the rehearsal run on the CPU, also on a GPU machine
        self.info: dict[str, Any] = {}
        self.world: Path | None = None
        self.run_dir: Path | None = None
        self.bundle: Path | None = None
        self.n_steps, self.n_validated = 0, 0  # commands run, command lines validated
        self._help: dict[tuple[str, ...], str] = {}

    # --- commands --------------------------------------------------------------------------------------------
    def mmrec(self, *args: object) -> list[str]:
        return [self.py, "-m", "multimodal_rec.cli", *map(str, args)]

    def probe(self, *args: object) -> list[str]:
        return [self.py, str(PROBES), *map(str, args)]

    def torchrun(self, *args: object) -> list[str]:
        return [self.py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *map(str, args)]

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> tuple[str, str]:
        """Run ``cmd`` in its own process group under ``min(timeout, budget left)``; (stdout, log text)."""
        limit = min(timeout, self.remaining())
        if limit < 1:
            raise StepFailed(f"{name}: not run, the time budget is spent")
        self.n_steps += 1
        log = self.work / "logs" / f"{self.n_steps:02d}-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[gpu-check] {name}: {shlex.join(cmd)}  (timeout {limit:.0f} s)", file=sys.stderr, flush=True)
        t = time.monotonic()
        with log.open("w+", encoding="utf-8", errors="replace") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n")
            fh.flush()
            proc = subprocess.Popen(  # its own session: a timeout kills the whole tree (workers, torchrun, Ray)
                cmd,
                cwd=self.work,
                env={**self.env, **(env or {})},
                stdout=subprocess.PIPE,
                stderr=fh,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            try:
                out, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise StepFailed(f"{name}: timed out after {limit:.0f} s (log {log})") from None
            fh.write(out)
            fh.seek(0)
            text = fh.read()
        print(f"[gpu-check] {name}: exit {proc.returncode} in {time.monotonic() - t:.1f} s", file=sys.stderr)
        if proc.returncode != 0:
            raise StepFailed(f"{name}: exit {proc.returncode}: {last_line(text)}")
        return out, text

    def run_json(
        self, name: str, cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        out, _ = self.run(name, cmd, timeout, env)
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise StepFailed(f"{name}: printed no JSON line")

    def validate(self, cmd: Sequence[str]) -> None:
        """Every ``--flag`` of ``cmd`` must appear in the ``--help`` of the command it is given to (through
        ``torchrun`` and ``gpu_probes.py det-cli -- ...`` too); raises :class:`StepFailed` naming the flag."""
        self._validate(list(cmd[1:]))
        self.n_validated += 1

    def _validate(self, args: list[str]) -> None:
        if args[:2] == ["-m", "torch.distributed.run"]:
            i = next(j for j in range(2, len(args)) if not args[j].startswith("-"))
            self._flags_in([self.py, *args[:2], "--help"], args[2:i])
            self._validate(args[i:])
        elif args[:2] == ["-m", "multimodal_rec.cli"]:
            sub = args[2:3] + ([args[3]] if args[2] == "bench" else [])  # `bench WHAT`: WHAT must be a choice
            self._flags_in([self.py, *args[:3], "--help"], args[3:], must_list=sub)
        elif args[:1] == [str(PROBES)]:
            rest = args[2:]
            inner = rest[rest.index("--") + 1 :] if "--" in rest else []
            self._flags_in([self.py, *args[:2], "--help"], rest[: len(rest) - len(inner)])
            if inner:
                self._validate(["-m", "multimodal_rec.cli", *inner])
        else:
            raise StepFailed(f"cannot validate {shlex.join(args)}")

    def _flags_in(self, help_cmd: list[str], args: Sequence[str], must_list: Sequence[str] = ()) -> None:
        key = tuple(help_cmd)
        if key not in self._help:
            res = subprocess.run(help_cmd, capture_output=True, text=True, env=self.env, timeout=120, cwd=self.work)
            if res.returncode != 0:
                raise StepFailed(f"`{shlex.join(help_cmd[1:])}` failed: {last_line(res.stderr)}")
            self._help[key] = res.stdout
        text = self._help[key]
        flags = [a.split("=", 1)[0] for a in args if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", a)]
        for word in [*flags, *must_list]:
            if not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
                raise StepFailed(f"`{shlex.join(help_cmd[1:-1])}` does not know {word}")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the command's whole process group (DataLoader workers, torchrun, Ray), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# --- the checks and the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Ctx, list[Row]], Any]  # fills in the rows' figures and results
    rows: tuple[tuple[str, str], ...]  # (path, what was checked); `what` may name fields of the plan: {batch}
    needs: tuple[str, ...] = ()  # Python modules (the env probe lists the missing ones)
    after: tuple[str, ...] = ()  # checks whose output it uses


def run_checks(
    ctx: Ctx, checks: Sequence[Check], blocked: Callable[[Ctx, Check], str | None], force_fail: set[str]
) -> list[Row]:
    """Each check in turn; a failed step fails the rows it had not decided, never the rest of the table."""
    out: list[Row] = []
    for c in checks:
        rows = [Row(p, w.format(**vars(ctx.plan))) for p, w in c.rows]
        t, validated = time.monotonic(), ctx.n_validated
        reason = "forced to fail by GPU_CHECK_FORCE_FAIL" if c.name in force_fail else blocked(ctx, c)
        if reason:
            for r in rows:
                r.figure, r.status = reason, FAIL if c.name in force_fail else SKIP
        else:
            try:
                c.fn(ctx, rows)
                n = ctx.n_validated - validated
                undecided = f"dry run: {n} command line{'s' * (n != 1)} checked against --help" if ctx.dry else ""
            except StepFailed as e:
                undecided = str(e)
            except Exception as e:  # a bug in a check must cost its rows, not the table
                undecided = f"driver error: {type(e).__name__}: {e}"
            for r in rows:
                if not r.figure:
                    r.figure = undecided or "not decided (a bug in the check)"
                    r.status = SKIP if ctx.dry and undecided.startswith("dry run") else FAIL
        rows[0].seconds = round(time.monotonic() - t, 1)
        print(f"[gpu-check] {c.name}: {', '.join(r.status for r in rows)} in {rows[0].seconds} s", file=sys.stderr)
        out += rows
    return out


def format_table(rows: Sequence[Row]) -> str:
    """One Markdown table (pastes into the README as is)."""
    head = ("path", "what was checked", "figure", "result", "s")
    body = [
        (r.path, r.what, r.figure.replace("|", "/"), r.status, "" if r.seconds is None else f"{r.seconds:.0f}")
        for r in rows
    ]
    w = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (n + 2) for n in w) + "|", *map(line, body)])
