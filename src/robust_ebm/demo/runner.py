"""Run the demo's stages with a cache in the output folder.

Each stage's result lives in ``<out>/stages/<name>/``: its figures and ``stage.json`` (the
fingerprint of its inputs, the result numbers, the wall time). A stage is reused when
``stage.json`` exists and its fingerprint equals the fingerprint of the stage's current inputs:
the stage's parameters (sizes, budgets, seed), its code version and the SHA-256 of every file it
reads (checkpoints, committed tables). Anything else is recomputed.

Crash safety: a stage is computed in ``<out>/stages/.<name>.partial/`` and only moved to its
final place, with ``stage.json`` written last, when it has finished; an interruption
(Ctrl-C, SIGKILL, power loss) at any point leaves either the previous finished stage or none, and
the next run recomputes what is missing. Stages are deterministic given their inputs (seeded
attacks, samplers and training), so a rerun after an interruption gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, file_sha256

__all__ = ["Stage", "StageContext", "StageRecord", "fingerprint", "prefixed", "run_stages"]

STAGE_FILE = "stage.json"
Log = Callable[[str], None]


def fingerprint(name: str, version: int, params: dict[str, Any], files: Sequence[Path]) -> str:
    """SHA-256 over a stage's name, code version, parameters and input files' contents.

    Files enter as (file name, SHA-256) in the given order, so new bytes in a checkpoint (or
    another checkpoint) invalidate the stage even when the path stays the same."""
    key = {
        "stage": name,
        "version": version,
        "params": params,
        "files": [[Path(p).name, file_sha256(p)] for p in files],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class StageContext:
    """What a stage's ``run`` gets: its parameters, a folder for its files and a logger."""

    params: dict[str, Any]
    dir: Path
    log: Log


@dataclass(frozen=True)
class Stage:
    """One step of the demo.

    Attributes:
        name: folder name and key (``energy``).
        title: what a person reads in progress lines and the report.
        version: bump when the stage's code changes what it computes (invalidates caches).
        params: JSON-friendly parameters; part of the fingerprint.
        files: files the stage reads; their SHA-256 is part of the fingerprint.
        run: ``run(ctx) -> result`` computes, writes figures into ``ctx.dir``, returns a
            JSON-friendly dict of numbers.
    """

    name: str
    title: str
    version: int
    params: dict[str, Any]
    files: tuple[Path, ...]
    run: Callable[[StageContext], dict[str, Any]]


@dataclass
class StageRecord:
    """A finished stage: where its files are, its result and how long it took."""

    name: str
    title: str
    dir: Path
    result: dict[str, Any]
    seconds: float  # wall time of the computation (when it was computed)
    cpu_seconds: float  # CPU time of this process for it (all threads); idle-machine wall time
    reused: bool
    fingerprint: str
    params: dict[str, Any] = field(default_factory=dict)
    wall_this_run: float = 0.0  # seconds this run spent on the stage (lookup or computation)


def _load_cached(final: Path, fp: str) -> dict[str, Any] | None:
    path = final / STAGE_FILE
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("fingerprint") == fp else None


def _compute(stage: Stage, root: Path, fp: str, log: Log) -> dict[str, Any]:
    final = root / stage.name
    partial = root / f".{stage.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted run
    partial.mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    result = stage.run(StageContext(params=stage.params, dir=partial, log=log))
    rec = {"fingerprint": fp, "name": stage.name, "title": stage.title, "params": stage.params,
           "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
           "result": result}
    # insertion order kept (no sort_keys): the report lists models and attacks in stage order
    atomic_write_text(partial / STAGE_FILE, json.dumps(rec, indent=2, default=str) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    # what a later run will reuse, so a computed and a reused stage report the same thing
    return json.loads((final / STAGE_FILE).read_text())


def prefixed(log: Log, prefix: str) -> Log:
    """``log`` with ``prefix`` before every line."""
    return lambda s: log(prefix + s)


def run_stages(stages: Sequence[Stage], out: Path, log: Log = print) -> list[StageRecord]:
    """Run or reuse each stage in order; one progress line per stage start and end."""
    root = Path(out) / "stages"
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i, stage in enumerate(stages, 1):
        t0 = time.perf_counter()
        tag = f"[{i}/{len(stages)}] {stage.title}"
        fp = fingerprint(stage.name, stage.version, stage.params, stage.files)
        rec = _load_cached(root / stage.name, fp)
        reused = rec is not None
        if rec is None:
            log(f"{tag}: running")
            try:
                rec = _compute(stage, root, fp, prefixed(log, "  "))
            except KeyboardInterrupt:
                log(f"{tag}: interrupted; run the same command again to resume (the "
                    f"{i - 1} finished stage(s) are kept)")
                raise
            log(f"{tag}: done in {rec['seconds']:.1f}s (CPU {rec['cpu_seconds']:.1f}s)")
        else:
            log(f"{tag}: reused from {root / stage.name} (computed in {rec['seconds']:.1f}s; "
                "inputs unchanged)")
        records.append(StageRecord(
            name=stage.name, title=stage.title, dir=root / stage.name, result=rec["result"],
            seconds=float(rec["seconds"]), cpu_seconds=float(rec.get("cpu_seconds", 0.0)),
            reused=reused, fingerprint=fp, params=stage.params,
            wall_this_run=time.perf_counter() - t0,
        ))
    return records
