"""Synthetic multi-domain NIfTI datasets for the demo and tests.

    python -m trainer.phantoms --out DIR [--domains ct_abdomen,mri_brain] [--per-domain 8] [--size 64]
                               [--seed 0] [--labels]

Every volume is first an integer *label map* (anatomy), then a modality renders intensities from it.
Transfer between domains is asymmetric by construction:
- ct_abdomen and mri_abdomen share one abdominal anatomy (body, fat, liver, kidneys, spine) rendered
  with different contrasts (HU vs T1-like with a bias field): they should help each other most;
- ct_chest shares body, fat and spine with the abdomen, plus lungs, heart and ribs of its own;
- mri_brain (the MNI152 template, randomly deformed, when nilearn is installed) shares nothing;
- pet_wholebody is low resolution with the abdomen's organs, brain, bladder and hot spots (lesions),
  Poisson noise;
- ct_abdomen_twin is drawn from exactly the generator and parameters of ct_abdomen, only its volumes
  differ (the per-volume seed includes the domain name).
Designed controls of the demo (pre-registered in docs/data.md, "Controls", before any result):
- POSITIVE CONTROL: ct_abdomen_twin vs ct_abdomen. The two are one distribution, so a training sample of
  either is worth about one sample of the other: a fitted exchange rate ~1 both ways. A method that
  cannot recover this cannot be trusted on real domain pairs.
- NEGATIVE CONTROL: mri_brain vs ct_abdomen. No shared anatomy (a brain against a trunk) and a different
  modality: an exchange rate ~0 expected.
Output: DIR/<domain>/<domain>_NNN.nii.gz, DIR/phantoms.jsonl (one line per volume: file, domain,
modality, seed, lesion flag, labels file) and DIR/dataset.yaml, a spec for `python -m trainer.ingest`.
`--labels` also writes the label maps (`*_labels.nii.gz`) for segmentation experiments.
Seeded: the same (seed, domain, index) gives the same volume whatever else is generated.
"""

from __future__ import annotations

import importlib
import json
import types
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from voxmix.formats.io import atomic_write_text
from voxmix.formats.progress import progress

from .volumes import make_output_folder


class _Lazy(types.ModuleType):
    """A module imported on first attribute access: `voxmix phantoms --help` need not pay for nibabel and
    scipy.ndimage (2.5 s of its 2.8 s start-up), only generating volumes does."""

    def __init__(self, name: str):
        super().__init__(name)
        self._mod: types.ModuleType | None = None

    def __getattr__(self, attr: str):
        if self._mod is None:
            self._mod = importlib.import_module(self.__name__)
        return getattr(self._mod, attr)


nib = _Lazy("nibabel")
ndimage = _Lazy("scipy.ndimage")

# Label ids shared by all generators (the label maps use them).
AIR, SOFT, FAT, LIVER, KIDNEY, SPINE, LESION, LUNG, HEART, RIB, BRAIN, BLADDER = range(12)
LABEL_NAMES = [
    "air",
    "soft",
    "fat",
    "liver",
    "kidney",
    "spine",
    "lesion",
    "lung",
    "heart",
    "rib",
    "brain",
    "bladder",
]

# Contrast-enhanced (portal venous) CT: enhanced liver and kidneys stand out from soft tissue even in
# the wide default window; lesions are hypodense.
CT_HU = {
    AIR: -1000,
    SOFT: 40,
    FAT: -100,
    LIVER: 130,
    KIDNEY: 200,
    SPINE: 700,
    LESION: 20,
    LUNG: -850,
    HEART: 150,
    RIB: 600,
}
MRI_T1 = {AIR: 0, SOFT: 300, FAT: 900, LIVER: 520, KIDNEY: 380, SPINE: 450, LESION: 180}
PET_SUV = {AIR: 0.0, SOFT: 0.8, FAT: 0.4, LIVER: 2.2, KIDNEY: 3.0, SPINE: 1.0, BRAIN: 7.0, BLADDER: 12.0}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalized RAS coordinates in [-1, 1] (x: right, y: anterior, z: superior)."""
    c = np.linspace(-1, 1, size, dtype=np.float32)
    return np.meshgrid(c, c, c, indexing="ij", sparse=True)


def _ellipsoid(g, center, radii) -> np.ndarray:
    x, y, z = g
    return ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + (
        (z - center[2]) / radii[2]
    ) ** 2 < 1


def _jitter(rng, v, amount):
    return np.asarray(v, dtype=np.float32) * (1 + rng.uniform(-amount, amount, size=len(v)))


def _body(rng, g, labels: np.ndarray) -> None:
    """Elliptic trunk with a subcutaneous fat layer and the spine: the anatomy every torso domain shares."""
    x, y, z = g
    rx, ry = _jitter(rng, (0.85, 0.62), 0.08)
    taper = 1 + rng.uniform(-0.12, 0.12) * z  # the trunk widens or narrows along z
    rx, ry = rx * taper, ry * taper
    outer = (x / rx) ** 2 + ((y + 0.05) / ry) ** 2 < 1
    inner = (x / (rx - 0.09)) ** 2 + ((y + 0.05) / (ry - 0.09)) ** 2 < 1
    outer = np.broadcast_to(outer, labels.shape)
    labels[outer] = FAT
    labels[np.broadcast_to(inner, labels.shape)] = SOFT
    spine = (x / 0.1) ** 2 + ((y + 0.45) / 0.1) ** 2 < 1
    labels[np.broadcast_to(spine, labels.shape)] = SPINE


def abdomen_labels(rng, size: int, lesion: bool) -> np.ndarray:
    g = _grid(size)
    labels = np.zeros((size, size, size), dtype=np.int8)
    _body(rng, g, labels)
    # The liver sits on the patient's right, i.e. at negative x in RAS.
    liver_c = (-0.35 + rng.uniform(-0.05, 0.05), 0.05, 0.2 + rng.uniform(-0.1, 0.1))
    labels[_ellipsoid(g, liver_c, _jitter(rng, (0.35, 0.3, 0.45), 0.1))] = LIVER
    for side in (-1, 1):
        labels[_ellipsoid(g, (side * 0.38, -0.3, -0.25), _jitter(rng, (0.12, 0.1, 0.22), 0.1))] = KIDNEY
    if lesion:
        # Radius 0.09-0.13 (2-3 voxels at 48^3): big enough to survive the encoder's 8^3 patches, so
        # lesion detection measures the features rather than being impossible (at 0.08 a linear probe
        # on any encoder, pretrained or random, stayed at chance).
        c = (liver_c[0] + rng.uniform(-0.1, 0.1), liver_c[1] + rng.uniform(-0.1, 0.1), liver_c[2])
        labels[_ellipsoid(g, c, (rng.uniform(0.09, 0.13),) * 3) & (labels == LIVER)] = LESION
    return labels


def chest_labels(rng, size: int, lesion: bool) -> np.ndarray:
    g = _grid(size)
    x, y, z = g
    labels = np.zeros((size, size, size), dtype=np.int8)
    _body(rng, g, labels)
    for side in (-1, 1):
        labels[_ellipsoid(g, (side * 0.38, 0.0, 0.05), _jitter(rng, (0.3, 0.42, 0.8), 0.08))] = LUNG
    labels[_ellipsoid(g, (0.1, 0.2, -0.1), _jitter(rng, (0.22, 0.2, 0.25), 0.1))] = HEART
    # Ribs: thin elliptic shells every few slices.
    shell = np.abs(np.sqrt((x / 0.74) ** 2 + ((y + 0.05) / 0.52) ** 2) - 1) < 0.04
    ribs = shell & (np.sin(z * 14 + rng.uniform(0, 6)) > 0.6)
    labels[ribs] = RIB
    if lesion:  # a solid nodule in a lung
        side = rng.choice([-1, 1])
        labels[_ellipsoid(g, (side * 0.4, 0.05, rng.uniform(-0.3, 0.4)), (0.07, 0.07, 0.07))] = LESION
    return labels


def wholebody_labels(rng, size: int, lesion: bool) -> tuple[np.ndarray, list]:
    """Head to pelvis along z: abdominal organs (shared with the abdomen), brain, bladder, hot spots."""
    g = _grid(size)
    x, y, z = g
    labels = np.zeros((size, size, size), dtype=np.int8)
    trunk = (x / 0.7) ** 2 + ((y + 0.05) / 0.45) ** 2 < 1
    labels[np.broadcast_to(trunk, labels.shape) & np.broadcast_to(z < 0.55, labels.shape)] = SOFT
    labels[_ellipsoid(g, (0, 0, 0.78), (0.3, 0.35, 0.2))] = BRAIN
    labels[_ellipsoid(g, (-0.3, 0.05, 0.1), _jitter(rng, (0.3, 0.25, 0.18), 0.1))] = LIVER
    for side in (-1, 1):
        labels[_ellipsoid(g, (side * 0.3, -0.25, -0.05), _jitter(rng, (0.1, 0.08, 0.1), 0.1))] = KIDNEY
    labels[_ellipsoid(g, (0, 0.1, -0.75), _jitter(rng, (0.15, 0.12, 0.08), 0.15))] = BLADDER
    spots = []  # (mask, SUV) per hot spot: each spot keeps its own uptake
    for _ in range(int(rng.integers(1, 4)) if lesion else 0):
        c = (rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), rng.uniform(-0.6, 0.5))
        # Radius 0.07-0.1: at 0.05 the PSF blur left spots at liver uptake (measured SUV 1.1-2.2 vs
        # liver 1.75), i.e. invisible, and the lesion task was unlearnable.
        m = _ellipsoid(g, c, (rng.uniform(0.07, 0.1),) * 3) & (labels != AIR)
        labels[m] = LESION
        spots.append((m, float(rng.uniform(6, 15))))
    return labels, spots


def _render(labels: np.ndarray, table: dict[int, float]) -> np.ndarray:
    lut = np.zeros(max(LABEL_NAMES.index(n) for n in LABEL_NAMES) + 1, dtype=np.float32)
    for k, v in table.items():
        lut[k] = v
    return lut[labels]


def _bias_field(rng, size: int, strength: float) -> np.ndarray:
    x, y, z = _grid(size)
    a = rng.normal(0, strength, size=6)
    return np.exp(a[0] * x + a[1] * y + a[2] * z + a[3] * x * y + a[4] * y * z + a[5] * x * z).astype(
        np.float32
    )


def gen_ct(rng, size: int, lesion: bool, chest: bool) -> tuple[np.ndarray, np.ndarray]:
    labels = (chest_labels if chest else abdomen_labels)(rng, size, lesion)
    hu = _render(labels, CT_HU)
    hu = ndimage.gaussian_filter(hu, 0.6) + rng.normal(0, 12, size=hu.shape).astype(np.float32)
    return np.round(hu).astype(np.int16), labels


def gen_mri_abdomen(rng, size: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    labels = abdomen_labels(rng, size, lesion)
    x = ndimage.gaussian_filter(_render(labels, MRI_T1), 0.8) * _bias_field(rng, size, 0.25)
    n1, n2 = rng.normal(0, 20, size=(2, *x.shape)).astype(np.float32)
    return np.sqrt((x + n1) ** 2 + n2**2), labels  # Rician magnitude noise


@lru_cache(maxsize=4)
def _mni(size: int) -> np.ndarray | None:
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError:
        return None
    t = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    return ndimage.zoom(t, [size / n for n in t.shape], order=1)


def gen_mri_brain(rng, size: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    t = _mni(size)
    if t is None:  # no nilearn: a synthetic head (skull shell, grey and white matter)
        g = _grid(size)
        t = np.zeros((size,) * 3, np.float32)
        t[_ellipsoid(g, (0, 0, 0), (0.85, 0.95, 0.8))] = 0.5
        t[_ellipsoid(g, (0, 0, 0), (0.78, 0.88, 0.72))] = 0.6
        t[_ellipsoid(g, (0, 0, 0.05), (0.55, 0.65, 0.5))] = 0.85
    # Random smooth deformation: low-frequency displacement of a few voxels.
    disp = [
        ndimage.zoom(rng.normal(0, 2.0, size=(4, 4, 4)), size / 4, order=3)[:size, :size, :size]
        for _ in range(3)
    ]
    coords = np.meshgrid(*[np.arange(size, dtype=np.float32)] * 3, indexing="ij")
    warped = ndimage.map_coordinates(t, [c + d for c, d in zip(coords, disp)], order=1, mode="constant")
    labels = (warped > 0.05 * warped.max()).astype(np.int8) * BRAIN
    if lesion:
        g = _grid(size)
        les = _ellipsoid(
            g, (rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.3)), (0.08,) * 3
        )
        les &= labels == BRAIN
        warped[les] *= 1.6
        labels[les] = LESION
    x = warped * rng.uniform(600, 1200) * _bias_field(rng, size, 0.15)
    n1, n2 = rng.normal(0, 15, size=(2, *x.shape)).astype(np.float32)
    return np.sqrt((x + n1) ** 2 + n2**2), labels


def gen_pet(rng, size: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    labels, spots = wholebody_labels(rng, size, lesion)
    suv = _render(labels, PET_SUV)
    for mask, uptake in spots:
        suv[mask & (labels == LESION)] = uptake
    suv = ndimage.gaussian_filter(suv, 1.5)  # scanner resolution (PSF)
    counts_per_suv = 30.0
    return rng.poisson(np.clip(suv, 0, None) * counts_per_suv).astype(np.float32) / counts_per_suv, labels


# name: (modality, spacing in mm, generator(rng, size, lesion) -> (image, labels), lesion probability)
DOMAINS: dict[str, tuple[str, tuple[float, float, float], Callable, float]] = {
    "ct_abdomen": ("CT", (5.5, 5.5, 5.5), lambda r, s, les: gen_ct(r, s, les, chest=False), 0.3),
    "ct_chest": ("CT", (5.5, 5.5, 5.5), lambda r, s, les: gen_ct(r, s, les, chest=True), 0.3),
    "mri_brain": ("MRI", (3.0, 3.4, 2.9), gen_mri_brain, 0.2),
    "mri_abdomen": ("MRI", (5.5, 5.5, 5.5), gen_mri_abdomen, 0.3),
    "pet_wholebody": ("PET", (8.0, 8.0, 16.0), gen_pet, 0.5),
}
# The positive control: the very entry of ct_abdomen (same generator, spacing and lesion rate).
DOMAINS["ct_abdomen_twin"] = DOMAINS["ct_abdomen"]


def generate(
    domain: str, index: int, *, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image, label map, info) of one phantom; deterministic in (seed, domain, index)."""
    modality, spacing, fn, p_lesion = DOMAINS[domain]
    rng = np.random.default_rng([seed, zlib.crc32(domain.encode()), index])
    lesion = bool(rng.random() < p_lesion)
    img, labels = fn(rng, size, lesion)
    lesion = bool((labels == LESION).any())
    return img, labels, {"domain": domain, "modality": modality, "spacing": spacing, "lesion": lesion}


def _save_nifti(path: Path, arr: np.ndarray, spacing) -> None:
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(tmp))
    tmp.replace(path)


def write_dataset(
    out: Path, domains: list[str], per_domain: int, size: int, seed: int, labels: bool
) -> list[dict]:
    """Raises OutputFolderError (a ValueError naming `--out`) when `out` cannot be a folder."""
    out = make_output_folder(out)
    index = []
    with progress(None, "phantoms", total=len(domains) * per_domain) as bar:
        for d in domains:
            make_output_folder(out / d)
            for i in range(per_domain):
                img, lab, info = generate(d, i, size=size, seed=seed)
                name = f"{d}/{d}_{i:03d}.nii.gz"
                _save_nifti(out / name, img, info["spacing"])
                row = {"file": name, **info, "spacing": list(info["spacing"]), "seed": seed, "index": i}
                if labels:
                    lname = f"{d}/{d}_{i:03d}_labels.nii.gz"
                    _save_nifti(out / lname, lab.astype(np.uint8), info["spacing"])
                    row["labels"] = lname
                index.append(row)
                bar.update()
    atomic_write_text(out / "phantoms.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in index))
    spec = [
        "format: voxmix.dataset/1",
        "defaults: {spacing: null, val_fraction: 0.2, min_size: 16}",
        "domains:",
    ]
    for d in domains:
        # Label maps are excluded from the images by their own folder-independent glob.
        spec.append(f"  {d}: {{modality: {DOMAINS[d][0]}, sources: ['{d}/{d}_[0-9][0-9][0-9].nii.gz']}}")
    atomic_write_text(out / "dataset.yaml", "\n".join(spec) + "\n")
    return index
