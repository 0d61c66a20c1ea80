"""Benchmark: reading a DICOM slice series end to end as ingest does (decode, rescale, sort, checks, RAS
orientation), three ways that must give the same array:
- before: ingest's reader before this benchmark (the baseline): pydicom per slice with a rescaled
  temporary each, stacked, then an explicit (column, row, slice) transposed copy;
- pydicom: today's fallback path: pydicom per slice rescaled in place into one array, reoriented by
  views (no transposed copy);
- simpleitk: today's default: SimpleITK's series reader (GDCM), one copy out of ITK's buffer.

The series is generated: `--slices` files of `--side`^2 int16 CT slices, written in shuffled order from
pydicom's CT_small.dcm, with two headers: "ge-private" as the template (~260 elements, ~180 of them GE
private: GDCM parses each, pydicom defers them) and "plain" (private elements removed, ~80). Reported:
wall-clock ms (the harness's lowest round median; the shared machine's load skews it, so the load is
recorded), CPU ms of this process (median; less sensitive to other processes), and the ratios against
pydicom measured in the same run.

    .venv/bin/python benchmarks/bench_dicom.py [--quick] [--out FILE] [--slices 200] [--side 256]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Recorder, measure, print_table  # noqa: E402
from voxmix.trainer.data.ingest import dicom  # noqa: E402
from voxmix.trainer.data.ingest.dicom import read_series  # noqa: E402
from voxmix.trainer.data.ingest.readers import _canonical, discover  # noqa: E402

READERS = ("before", "pydicom", "simpleitk")


def read_series_before(item):
    """The reader before SimpleITK, step for step (its parse, sort, per-slice rescale, stack and
    transposed copy); the SUV metadata (negligible) is left out."""
    import pydicom

    slices = [pydicom.dcmread(f) for f in item.files]
    first = slices[0]
    iop = [float(v) for v in first.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda s: float(np.dot(normal, [float(v) for v in s.ImagePositionPatient])))
    arr = np.stack([dicom._rescale(s, dicom._pixels(s, item.source)) for s in slices])
    positions = [[float(v) for v in s.ImagePositionPatient] for s in slices]
    affine = dicom._checked_affine(item.source, iop, first.PixelSpacing, positions)  # (k, i, j) axes
    data = np.ascontiguousarray(arr.transpose(2, 1, 0))  # (k, i, j) -> (j, i, k), as before
    return _canonical(data, affine[:, [2, 1, 0, 3]], {})


def read(item, reader: str):
    return read_series_before(item) if reader == "before" else read_series(item, reader)


HEADERS = ("ge-private", "plain")


def write_series(folder: Path, slices: int, side: int, header: str) -> int:
    """Writes the series; returns the number of elements per file."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if header == "plain":
        ds.remove_private_tags()
    ds = copy.deepcopy(ds)
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows = ds.Columns = side
    ds.PixelSpacing = [0.8, 0.8]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    rng = np.random.default_rng(0)
    for n, k in enumerate(rng.permutation(slices)):  # file names not in position order
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * float(k)]
        ds.PixelData = rng.integers(0, 2000, size=(side, side), dtype=np.int16).tobytes()
        ds.save_as(folder / f"slice{n:04d}.dcm", enforce_file_format=True)
    return len(ds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument(
        "--out",
        default=os.path.join(here, "results", "dicom-cpu.jsonl"),
        help="JSON Lines file to append rows to ('' to skip)",
    )
    p.add_argument("--quick", action="store_true", help="64 slices (smoke run)")
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--dir", default=None, help="folder for the series (default: a temporary folder)")
    args = p.parse_args()
    slices = 64 if args.quick else args.slices
    rec = Recorder(bench="dicom", device="cpu", path=args.out or None)
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    table = []
    for header in HEADERS:
        folder = Path(tmp.name) / header
        t0 = time.perf_counter()
        elements = write_series(folder, slices, args.side, header)
        print(
            f"wrote {slices} slices of {args.side}^2 ({header}, {elements} elements a file) in "
            f"{time.perf_counter() - t0:.1f}s"
        )
        (item,) = discover(str(folder), Path(tmp.name))
        vols = {reader: read(item, reader) for reader in READERS}  # also warms the page cache
        for reader, vol in vols.items():
            np.testing.assert_array_equal(vol.data, vols["before"].data, err_msg=reader)
            np.testing.assert_allclose(vol.affine, vols["before"].affine, rtol=0, atol=1e-9)
        del vols
        result = {}
        for reader in READERS:
            cpu: list[float] = []

            def fn(item=item, reader=reader, cpu=cpu):
                c0 = time.process_time()
                read(item, reader)
                cpu.append((time.process_time() - c0) * 1e3)

            timing = measure(fn, device="cpu", warmup=1, min_reps=2, min_time_s=0.0)
            result[reader] = (timing, statistics.median(cpu))
        (before_ms, before_cpu), (py_ms, py_cpu) = [(result[r][0].ms, result[r][1]) for r in READERS[:2]]
        for reader, (timing, cpu_ms) in result.items():
            config = {"slices": slices, "side": args.side, "header": header, "elements": elements}
            ratios = {
                "vs_before": before_ms / timing.ms,
                "cpu_vs_before": before_cpu / cpu_ms,
                "vs_pydicom": py_ms / timing.ms,
                "cpu_vs_pydicom": py_cpu / cpu_ms,
            }
            rec.add(
                config=config,
                backend=reader,
                mode="read_series",
                timing=timing,
                cpu_ms=cpu_ms,
                **ratios,
                # Other work on a shared machine skews wall-clock times; the CPU ratios less so.
                load_avg_1m=os.getloadavg()[0],
            )
            table.append([header, reader, timing.ms, cpu_ms, *ratios.values()])
    heads = ["x before", "x before (CPU)", "x pydicom", "x pydicom (CPU)"]
    print_table(["header", "reader", "ms", "CPU ms", *heads], table)
    rec.write()
    tmp.cleanup()


if __name__ == "__main__":
    main()
