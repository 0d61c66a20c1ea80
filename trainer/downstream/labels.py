"""Labels for downstream tasks: `labels.jsonl` (`voxmix.labels/1`) next to an ingested manifest.

    python -m trainer.downstream.labels --data DIR --index RAW/phantoms.jsonl [--spec RAW/dataset.yaml]

The label index (`--index`, JSONL) names, per source as the ingest spec names it, a label map file
and/or class labels: `{"source": "ct/a.nii.gz", "labels": "ct/a_labels.nii.gz", "classes": {"lesion": 1}}`.
`trainer.phantoms --labels` writes such an index (`phantoms.jsonl`: `file`, `labels`, `lesion`), read
as is. Each label map is put on the grid of its ingested volume with the volume's own geometry: read
and reoriented to RAS+ like the image, resampled by nearest neighbour to the ingest grid, cropped to the
same foreground box (recomputed from the image by the ingest code itself), then checked against the
manifest's shape. Output: `DIR/labels/<id>.npy` (uint8) and `DIR/labels.jsonl` (docs/formats.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from voxmix.formats.io import jsonl_values
from voxmix.formats.labels import FILENAME, LabelsError, write_labels_file
from voxmix.trainer.downstream.cli import ArgumentParser, fail

# ---------------------------------------------------------------------------------------------------
# Writing: label maps onto the ingest grid


def _read_index(path: Path) -> dict[str, dict]:
    out = {}
    for no, obj in jsonl_values(path, LabelsError):
        src = obj.get("source", obj.get("file"))
        if not isinstance(src, str):
            raise LabelsError(f"{path}: line {no}: field 'source' (or 'file') missing")
        classes = obj.get("classes", {})
        if not isinstance(classes, dict) or not all(isinstance(v, int) for v in classes.values()):
            raise LabelsError(
                f"{path}: line {no}: field 'classes' must map names to integers, got {classes!r}"
            )
        classes = dict(classes)
        if "lesion" in obj and "lesion" not in classes:  # trainer.phantoms' index
            classes["lesion"] = int(bool(obj["lesion"]))
        out[src] = {"labels": obj.get("labels"), "classes": classes}
    return out


def _nearest(lab: np.ndarray, shape) -> np.ndarray:
    if tuple(shape) == lab.shape:
        return lab
    import torch  # here, not at the top: `--help` answers without loading torch (~5 s cold)

    t = torch.from_numpy(np.ascontiguousarray(lab.astype(np.float32)))[None, None]
    # "nearest-exact" samples voxel centres, which is where the trilinear image resampling samples too.
    return torch.nn.functional.interpolate(t, size=tuple(shape), mode="nearest-exact")[0, 0].numpy()


def align_label_map(image_file: Path, label_file: Path, domain_spec) -> np.ndarray:
    """The label map on the grid that `trainer.ingest` gives `image_file` under `domain_spec`."""
    from voxmix.trainer.data.ingest.preprocess import foreground_box, normalize, resample
    from voxmix.trainer.data.ingest.readers import Item, read_item

    img = read_item(Item(source=str(image_file), kind="nifti", files=[image_file]))
    lab = read_item(Item(source=str(label_file), kind="nifti", files=[label_file]))
    if lab.data.shape != img.data.shape:
        raise LabelsError(f"{label_file}: shape {lab.data.shape} differs from the image's {img.data.shape}")
    x, _ = resample(img.data, img.spacing, domain_spec.spacing)
    _, fg, _ = normalize(x, domain_spec, img.meta.get("suv_factor"))
    box = foreground_box(fg, domain_spec.margin)
    # C order, as docs/formats.md specifies and the readers check: the NIfTI reader's arrays are
    # Fortran-ordered views, which astype() keeps (label maps were written in Fortran order before).
    return np.ascontiguousarray(np.rint(_nearest(lab.data, x.shape)[box]).astype(np.uint8))


def write_labels(data_dir: Path, index_path: Path, spec_path: Path, names: list[str]) -> int:
    from voxmix.formats.manifest import read_manifest
    from voxmix.formats.progress import progress
    from voxmix.trainer.data.ingest.pipeline import save_npy_atomic
    from voxmix.trainer.data.ingest.spec import load_spec

    manifest = read_manifest(data_dir / "manifest.jsonl")
    spec = load_spec(spec_path)
    domains = {d.name: d for d in spec.domains}
    index = _read_index(index_path)
    rows: list[dict] = []
    for rec in progress(manifest.records, "labels"):
        entry = index.get(rec.source)
        if entry is None:
            continue
        row: dict = {"id": rec.id, "classes": entry["classes"]}
        if entry["labels"]:
            if rec.domain not in domains:
                raise LabelsError(f"{spec_path}: no domain {rec.domain!r} (the manifest's record {rec.id!r})")
            lab = align_label_map(spec.base / rec.source, spec.base / entry["labels"], domains[rec.domain])
            if tuple(lab.shape) != tuple(rec.shape):
                raise LabelsError(
                    f"{index_path}: {entry['labels']}: aligned shape {lab.shape} != manifest shape "
                    f"{rec.shape} of {rec.id}"
                )
            rel = f"labels/{rec.id}.npy"
            save_npy_atomic(data_dir / rel, lab)
            row["labels"] = rel
        rows.append(row)
    write_labels_file(data_dir, names, rows, index=str(index_path))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    # `voxmix labels` sets sys.argv[0] to its own name (trainer/cli.py: prog(), which this package may
    # not import). Every option's default is explained in its help text: none shows `(default: ...)`.
    run_as = sys.argv[0] if sys.argv and sys.argv[0].startswith("voxmix ") else None
    p = ArgumentParser(
        prog=run_as or "python -m trainer.downstream.labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="ingested folder (manifest.jsonl)")
    p.add_argument("--index", required=True, help="label index JSONL (e.g. phantoms.jsonl)")
    p.add_argument("--spec", help="ingest spec used (default: dataset.yaml next to the index)")
    p.add_argument("--names", help="comma-separated label names (default: trainer.phantoms' LABEL_NAMES)")
    a = p.parse_args(argv)
    if a.names:
        names = a.names.split(",")
    else:
        from voxmix.trainer.data.phantoms import LABEL_NAMES

        names = list(LABEL_NAMES)
    index = Path(a.index)
    spec = Path(a.spec) if a.spec else index.parent / "dataset.yaml"
    try:
        n = write_labels(Path(a.data), index, spec, names)
    except (ValueError, OSError) as exc:  # LabelsError, ManifestError, SpecError: named file and field
        return fail(exc)
    print(f"wrote {n} label records to {Path(a.data) / FILENAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
