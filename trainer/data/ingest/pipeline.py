"""The ingest driver: discover sources, process them in parallel, write volumes, manifest, failures.

Resumable: a source whose checksum matches the record of the existing manifest, and whose `.npy` is
still what that record describes (header, size and content statistics), is not processed again; a
missing or corrupt `.npy` is rebuilt, with a warning naming it. The manifest is rewritten atomically
every `CHECKPOINT_EVERY` results, so a crash loses at most that much work. Failures never stop the
others; they are listed in `failures.jsonl` (rewritten by every run, so it lists exactly the current
run's failures).

Splits are by subject when one is known (sources.py), so that no subject is in both train and val;
each record carries the RAS+ affine of its `.npy` (origin, direction, spacing) so that outputs can be
mapped back to patient space.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxmix.formats.io import atomic_write_text, temp_file_beside
from voxmix.formats.manifest import (
    FILENAME,
    ManifestError,
    VolumeRecord,
    read_manifest,
    record_from_json,
    write_manifest,
)
from voxmix.formats.progress import progress

from ..volumes import VolumeError, make_output_folder, open_volume
from .preprocess import preprocess
from .readers import IngestFailure, Item, Volume, checksum, read_item
from .sources import source_jobs
from .spec import DomainSpec, Spec
from .workers import make_pool

FAILURES = "failures.jsonl"
CHECKPOINT_EVERY = 25


@dataclass(kw_only=True)
class Result:
    done: list[VolumeRecord] = field(default_factory=list)
    skipped: int = 0
    rebuilt: list[tuple[str, str]] = field(default_factory=list)
    """(output path, why the existing one was not kept) of unchanged sources whose `.npy` was redone."""
    failures: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 3 if self.failures else 0


def record_id(domain: str, source: str) -> str:
    stem = re.sub(r"(\.nii\.gz|\.[A-Za-z0-9]+)$", "", Path(source.split("#")[0]).name) or "volume"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:40]
    return f"{domain}-{stem}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"


def split_of(sha: str, val_fraction: float) -> str:
    return "val" if int(sha[:8], 16) / 2**32 < val_fraction else "train"


def split_key(sha: str, subject: str | None) -> str:
    """What the split hashes: the subject's SHA-256 when known (all its volumes go together, in every
    domain with the same val_fraction), else the source checksum (the behaviour before subjects)."""
    return hashlib.sha256(subject.encode()).hexdigest() if subject else sha


def output_geometry(
    affine, spacing_in, spacing_out, box_start
) -> tuple[tuple[float, float, float], tuple[tuple[float, float, float], ...]]:
    """(origin, direction) in RAS+ mm of the written array, from the reader's affine of its (canonical)
    data, the spacing before and after resampling and the crop's start in the resampled grid.

    preprocess.resample keeps the extent (n voxels of s mm -> m voxels of n*s/m mm) and samples with
    `align_corners=False`: output voxel i lies at input coordinate (i + 0.5) * f - 0.5, f = n/m =
    spacing_out / spacing_in; so the output grid is the input's scaled by f and shifted by (f - 1) / 2,
    then shifted by the crop's start."""
    a = np.asarray(affine, dtype=np.float64)
    f = np.asarray(spacing_out, dtype=np.float64) / np.asarray(spacing_in, dtype=np.float64)
    lin = a[:3, :3] * f[None, :]
    origin = a[:3, 3] + a[:3, :3] @ (0.5 * f - 0.5) + lin @ np.asarray(box_start, dtype=np.float64)
    direction = lin / np.linalg.norm(lin, axis=0, keepdims=True)
    return (
        tuple(round(float(v), 6) for v in origin),  # type: ignore[return-value]
        tuple(tuple(round(float(v), 6) for v in row) for row in direction),
    )


def _reader_affine(vol: Volume):
    """The 4x4 RAS+ affine of `vol.data` (after the readers' reorientation) as the reader gives it, as
    `Volume.affine` or `Volume.meta["affine"]`; None when the reader gives none."""
    a = getattr(vol, "affine", None)
    return a if a is not None else vol.meta.get("affine")


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)  # the umask's mode, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)  # NumPy format v1 header: DALI's numpy reader reads it
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _classify(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)) or "gzip" in text or "compressed" in text:
        return "corrupt"
    if "truncat" in text or "end of file" in text or "too short" in text or "buffer is too small" in text:
        return "truncated"
    return "unreadable"


def process(
    item: Item, spec: DomainSpec, out: str, previous: dict | None, subject: str | None = None
) -> dict:
    """Worker: one source -> {"record": ...} or {"skipped": record} or {"failure": ...}, plus its domain
    and source. Never raises."""
    return {**_process(item, spec, out, previous, subject), "domain": spec.name, "source": item.source}


# Tolerance of the statistics check: the manifest stores them rounded to 6 decimals.
_STATS_TOL = 1e-5


def output_problem(path: Path, previous: dict) -> str | None:
    """Why the existing output of an unchanged source cannot be kept (a message naming it), or None.

    Header, shape, dtype and size against the record (trainer/data/volumes.py), then min, max and mean
    against the record's statistics of the written array: a rerun reads every source in full for its
    checksum anyway, and this one pass over the (smaller) output also catches corruption that keeps the
    size, e.g. a zeroed block."""
    if not os.path.lexists(path):
        return f"{path}: missing"
    try:
        vol = open_volume(path, _record(previous))
        x = vol.astype(np.float32)
        got = {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean(dtype=np.float64))}
    except VolumeError as exc:
        return str(exc)
    except OSError as exc:  # an I/O error in the middle of the data
        return f"{path}: cannot read: {exc.strerror or exc}"
    want = previous.get("stats", {})
    for key, v in got.items():
        w = want.get(key)
        # `not <=` so that a NaN read back counts as a difference.
        if isinstance(w, (int, float)) and not abs(v - w) <= _STATS_TOL * max(1.0, abs(w)):
            return f"{path}: its {key} is {v:.6g}, the manifest recorded {w:.6g}: the data changed"
    return None


def _with_subject(obj: dict, subject: str | None, spec: DomainSpec) -> dict:
    """A previous record with the current spec's subject and split (the split rule may have changed)."""
    obj = {k: v for k, v in obj.items() if k != "subject"}
    if subject:
        obj["subject"] = subject
    obj["split"] = split_of(split_key(obj["sha256"], subject), spec.val_fraction)
    return obj


def _process(item: Item, spec: DomainSpec, out: str, previous: dict | None, subject: str | None) -> dict:
    t0 = time.perf_counter()
    rebuilt: dict = {}
    try:
        sha = checksum(item) if item.kind != "bad" else ""
        if previous and previous["sha256"] == sha:
            problem = output_problem(Path(out) / previous["path"], previous)
            if problem is None:
                return {"skipped": _with_subject(previous, subject, spec)}
            rebuilt = {"rebuilt": [previous["path"], problem]}
        vol = read_item(item)
        origin = direction = None
        # The written array's geometry: the reader's affine, the resampling and the crop box.
        arr, spacing, stats, box = preprocess(vol, spec, return_box=True)
        affine = _reader_affine(vol)
        if affine is not None:
            origin, direction = output_geometry(affine, vol.spacing, spacing, [b.start for b in box])
        rid = record_id(spec.name, item.source)
        rel = f"{spec.name}/{rid}.npy"
        save_npy_atomic(Path(out) / rel, arr)
        rec = VolumeRecord(
            id=rid,
            domain=spec.name,
            modality=spec.modality,
            path=rel,
            shape=tuple(int(s) for s in arr.shape),
            spacing=tuple(round(float(s), 6) for s in spacing),
            source=item.source,
            sha256=sha,
            split=split_of(split_key(sha, subject), spec.val_fraction),
            dtype=spec.dtype,
            stats={k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.items()},
            subject=subject or None,
            origin=origin,
            direction=direction,
        )
        return {"record": rec.to_json(), "seconds": time.perf_counter() - t0, **rebuilt}
    except IngestFailure as exc:
        return {
            "failure": {"source": item.source, "domain": spec.name, "reason": exc.reason, "detail": str(exc)}
        }
    except Exception as exc:  # unknown reader errors: reported with their type, the run continues
        return {
            "failure": {
                "source": item.source,
                "domain": spec.name,
                "reason": _classify(exc),
                "detail": f"{type(exc).__name__}: {exc}",
            }
        }


def _record(obj: dict) -> VolumeRecord:
    return record_from_json(obj)


def _unit(r: VolumeRecord) -> str:
    """What moves between splits as one: the subject's volumes, or a volume of unknown subject."""
    return f"subject:{r.subject}" if r.subject else f"id:{r.id}"


def _ensure_val(records: list[VolumeRecord], spec: Spec) -> list[VolumeRecord]:
    """Every domain keeps at least one training volume (the subject, or volume, with the largest
    checksum), and a domain with >= 2 subjects (volumes of unknown subject count one each) and
    val_fraction > 0 gets at least one validation subject (the smallest checksum), so that every domain
    can be both trained on and evaluated. A subject moves with all its volumes of the domain."""
    out = list(records)
    for d in spec.domains:
        mine = [r for r in out if r.domain == d.name]
        if mine and all(r.split == "val" for r in mine):
            unit = _unit(max(mine, key=lambda r: r.sha256))
            out = [_with_split(r, "train") if r.domain == d.name and _unit(r) == unit else r for r in out]
            mine = [r for r in out if r.domain == d.name]
        units = {_unit(r) for r in mine}
        if d.val_fraction > 0 and len(units) >= 2 and not any(r.split == "val" for r in mine):
            unit = _unit(min(mine, key=lambda r: r.sha256))
            out = [_with_split(r, "val") if r.domain == d.name and _unit(r) == unit else r for r in out]
    return out


def _with_split(r: VolumeRecord, split: str) -> VolumeRecord:
    obj = r.to_json()
    obj["split"] = split
    return _record(obj)


def _previous_records(out: Path) -> dict[tuple[str, str], dict]:
    """The records of the existing manifest by (domain, source); none if it is missing or unreadable."""
    previous: dict[tuple[str, str], dict] = {}
    if (out / FILENAME).exists():
        try:
            for r in read_manifest(out).records:
                previous[(r.domain, r.source)] = r.to_json()
        except ManifestError as exc:
            print(
                f"warning: ignoring the existing manifest ({exc}); every source is processed again",
                file=sys.stderr,
            )
    return previous


@dataclass(kw_only=True)
class _Collector:
    """Gathers the workers' results into `result`, checkpointing the manifest every CHECKPOINT_EVERY."""

    spec: Spec
    out: Path
    header: dict
    unhandled: dict[tuple[str, str], dict]
    bar: Any = None
    result: Result = field(default_factory=Result)

    def checkpoint(self, final: bool = False) -> None:
        keep = [] if final else [_record(r) for r in self.unhandled.values()]
        write_manifest(self.out / FILENAME, _ensure_val(self.result.done + keep, self.spec), self.header)

    def say(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def handle(self, res: dict) -> None:
        result = self.result
        self.unhandled.pop((res["domain"], res["source"]), None)
        if "rebuilt" in res:
            path, why = res["rebuilt"]
            result.rebuilt.append((path, why))
            self.say(f"warning: {why}; rebuilt it from {res['source']}")
        if "record" in res:
            result.done.append(_record(res["record"]))
        elif "skipped" in res:
            result.skipped += 1
            result.done.append(_record(res["skipped"]))
        else:
            result.failures.append(res["failure"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=len(result.failures), skipped=result.skipped)
        if (len(result.done) + len(result.failures)) % CHECKPOINT_EVERY == 0:
            self.checkpoint()


def _progress_bar(total: int) -> Any:
    return progress(None, "ingest", total=total, unit="vol")  # whole lines in a SLURM log


def _run_jobs(args: list[tuple], workers: int, handle: Callable[[dict], None]) -> None:
    if workers <= 1:
        for a in args:
            handle(process(*a))
    else:
        with make_pool(workers) as pool:
            futures = [pool.submit(process, *a) for a in args]
            for f in as_completed(futures):
                handle(f.result())


def _write_failures(out: Path, failures: list[dict]) -> None:
    lines = [
        json.dumps(f, sort_keys=True) for f in sorted(failures, key=lambda f: (f["domain"], f["source"]))
    ]
    atomic_write_text(out / FAILURES, "".join(line + "\n" for line in lines))


def ingest(spec: Spec, out: str | os.PathLike, *, workers: int = 1, progress: bool = True) -> Result:
    """Raises SpecError when a domain's sources match nothing and OutputFolderError for a bad `out`, both
    before any work."""
    jobs = source_jobs(spec)
    out = make_output_folder(out)
    previous = _previous_records(out)
    # Records of the previous manifest not handled yet stay in intermediate checkpoints, so that a crash
    # in the middle of a resumed run does not make the next run redo them.
    unhandled = {
        (d.name, item.source): _with_subject(previous[(d.name, item.source)], subject, d)
        for item, d, subject in jobs
        if (d.name, item.source) in previous
    }
    collector = _Collector(
        spec=spec,
        out=out,
        header={"spec": str(spec.path), "created_by": "trainer.ingest"},
        unhandled=unhandled,
        bar=_progress_bar(len(jobs)) if progress else None,
    )
    args = [(item, d, str(out), previous.get((d.name, item.source)), subject) for item, d, subject in jobs]
    _run_jobs(args, workers, collector.handle)
    if collector.bar is not None:
        collector.bar.close()
    collector.checkpoint(final=True)
    result = collector.result
    result.done = _ensure_val(result.done, spec)
    _write_failures(out, result.failures)
    return result
