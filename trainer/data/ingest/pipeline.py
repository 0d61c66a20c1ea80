"""The ingest driver: discover sources, process them in parallel, write volumes, manifest, failures.

Resumable: a source whose checksum matches the record of the existing manifest (and whose `.npy` is
there) is not processed again. The manifest is rewritten atomically every `CHECKPOINT_EVERY` results, so
a crash loses at most that much work. Failures never stop the others; they are listed in
`failures.jsonl` (rewritten by every run, so it lists exactly the current run's failures).
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
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxmix.formats.io import atomic_write_text, temp_file_beside
from voxmix.formats.manifest import FILENAME, ManifestError, VolumeRecord, read_manifest, write_manifest

from .preprocess import preprocess
from .readers import IngestFailure, Item, checksum, discover, read_item
from .spec import DomainSpec, Spec

FAILURES = "failures.jsonl"
CHECKPOINT_EVERY = 25


@dataclass(kw_only=True)
class Result:
    done: list[VolumeRecord] = field(default_factory=list)
    skipped: int = 0
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


def process(item: Item, spec: DomainSpec, out: str, previous: dict | None) -> dict:
    """Worker: one source -> {"record": ...} or {"skipped": record} or {"failure": ...}, plus its domain
    and source. Never raises."""
    return {**_process(item, spec, out, previous), "domain": spec.name, "source": item.source}


def _process(item: Item, spec: DomainSpec, out: str, previous: dict | None) -> dict:
    t0 = time.perf_counter()
    try:
        sha = checksum(item) if item.kind != "bad" else ""
        if previous and previous["sha256"] == sha and (Path(out) / previous["path"]).exists():
            return {"skipped": previous}
        vol = read_item(item)
        arr, spacing, stats = preprocess(vol, spec)
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
            split=split_of(sha, spec.val_fraction),
            dtype=spec.dtype,
            stats={k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.items()},
        )
        return {"record": rec.to_json(), "seconds": time.perf_counter() - t0}
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


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # parallelism comes from the worker processes


def _record(obj: dict) -> VolumeRecord:
    obj = dict(obj)
    obj["shape"] = tuple(obj["shape"])
    obj["spacing"] = tuple(obj["spacing"])
    return VolumeRecord(**obj)


def _ensure_val(records: list[VolumeRecord], spec: Spec) -> list[VolumeRecord]:
    """Every domain keeps at least one training volume (the one with the largest checksum), and a domain
    with >= 2 volumes and val_fraction > 0 gets at least one validation volume (the smallest checksum),
    so that every domain can be both trained on and evaluated."""
    out = list(records)
    for d in spec.domains:
        mine = [r for r in out if r.domain == d.name]
        if mine and all(r.split == "val" for r in mine):
            pick = max(mine, key=lambda r: r.sha256)
            out = [_with_split(r, "train") if r is pick else r for r in out]
            mine = [r for r in out if r.domain == d.name]
        if d.val_fraction > 0 and len(mine) >= 2 and not any(r.split == "val" for r in mine):
            pick = min(mine, key=lambda r: r.sha256)
            out = [_with_split(r, "val") if r is pick else r for r in out]
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


def _jobs(spec: Spec) -> list[tuple[Item, DomainSpec]]:
    """Every source of every domain, once per domain, in spec and discovery order."""
    jobs: list[tuple[Item, DomainSpec]] = []
    for d in spec.domains:
        seen: set[str] = set()
        for pattern in d.sources:
            for item in discover(pattern, spec.base):
                if item.source not in seen:
                    seen.add(item.source)
                    jobs.append((item, d))
    return jobs


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

    def handle(self, res: dict) -> None:
        result = self.result
        self.unhandled.pop((res["domain"], res["source"]), None)
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
    from tqdm import tqdm

    return tqdm(total=total, unit="vol", desc="ingest", file=sys.stderr)


def _run_jobs(args: list[tuple], workers: int, handle: Callable[[dict], None]) -> None:
    if workers <= 1:
        for a in args:
            handle(process(*a))
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            futures = [pool.submit(process, *a) for a in args]
            for f in as_completed(futures):
                handle(f.result())


def _write_failures(out: Path, failures: list[dict]) -> None:
    lines = [
        json.dumps(f, sort_keys=True) for f in sorted(failures, key=lambda f: (f["domain"], f["source"]))
    ]
    atomic_write_text(out / FAILURES, "".join(line + "\n" for line in lines))


def ingest(spec: Spec, out: str | os.PathLike, *, workers: int = 1, progress: bool = True) -> Result:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_records(out)
    jobs = _jobs(spec)
    # Records of the previous manifest not handled yet stay in intermediate checkpoints, so that a crash
    # in the middle of a resumed run does not make the next run redo them.
    unhandled = {
        (d.name, item.source): previous[(d.name, item.source)]
        for item, d in jobs
        if (d.name, item.source) in previous
    }
    collector = _Collector(
        spec=spec,
        out=out,
        header={"spec": str(spec.path), "created_by": "trainer.ingest"},
        unhandled=unhandled,
        bar=_progress_bar(len(jobs)) if progress else None,
    )
    args = [(item, d, str(out), previous.get((d.name, item.source))) for item, d in jobs]
    _run_jobs(args, workers, collector.handle)
    if collector.bar is not None:
        collector.bar.close()
    collector.checkpoint(final=True)
    result = collector.result
    result.done = _ensure_val(result.done, spec)
    _write_failures(out, result.failures)
    return result
