"""Print the versions of the packages voxmix's results depend on, and where they differ from the lock file.

    python scripts/versions.py [--lock configs/lock.txt] [--strict]

Reads installed distributions' metadata only (importing deepspeed or DALI takes seconds and prints banners).
`make test` runs it first, so every test log says what it ran with. --strict exits 1 on a difference from
the lock (torch, whose CPU or CUDA build the Makefile chooses, and Triton on a CUDA build, are not locked).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "configs" / "lock.txt"
# (label, distribution names tried in order)
KEY = [
    ("torch", ("torch",)),
    ("triton", ("triton",)),
    ("numpy", ("numpy",)),
    ("scipy", ("scipy",)),
    ("deepspeed", ("deepspeed",)),
    ("monai", ("monai",)),
    ("DALI", ("nvidia-dali-cuda130", "nvidia-dali-cuda120")),
    ("nibabel", ("nibabel",)),
    ("pytest", ("pytest",)),
    ("ruff", ("ruff",)),
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (comments and blank lines skipped)."""
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            raise SystemExit(f"{path}:{n}: expected 'name==version', got {line!r}")
        pins[_norm(m.group(1))] = m.group(2)
    return pins


def installed(names) -> tuple[str, str] | None:
    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lock", type=Path, default=LOCK)
    ap.add_argument(
        "--strict", action="store_true", help="exit 1 when an installed version differs from the lock"
    )
    a = ap.parse_args()
    parts = [f"python {platform.python_version()}"]
    for label, names in KEY:
        got = installed(names)
        parts.append(f"{label} {got[1] if got else 'not installed'}")
    print("voxmix: " + " | ".join(parts))
    if not a.lock.exists():
        print(f"voxmix: no lock file at {a.lock}: versions are whatever pip resolved")
        return 1 if a.strict else 0
    pins = read_lock(a.lock)
    cuda_torch = _cuda_build()
    diff = []
    for name, want in sorted(pins.items()):
        if name == "triton" and cuda_torch:
            continue  # a CUDA build of torch pins its own Triton (the Makefile leaves it unlocked there)
        got = installed((name,))
        if got is None:
            continue  # platform-specific or optional: not installed here
        if got[1] != want:
            diff.append(f"{name} {got[1]} (lock {want})")
    if diff:
        print(
            f"voxmix: WARNING: {len(diff)} installed version(s) differ from {a.lock.name}: " + ", ".join(diff)
        )
        return 1 if a.strict else 0
    print(f"voxmix: every installed package matches its pinned version in {a.lock}")
    return 0


def _cuda_build() -> bool:
    """True when the installed torch is a CUDA build (read from its version file, without importing it)."""
    try:
        files = metadata.files("torch") or []
    except metadata.PackageNotFoundError:
        return False
    for f in files:
        if str(f).replace("\\", "/") == "torch/version.py":
            text = Path(f.locate()).read_text()
            m = re.search(r"^cuda\s*(?::\s*\S+)?\s*=\s*(.+)$", text, re.M)
            return bool(m) and m.group(1).strip() not in ("None", "'None'")
    return False


if __name__ == "__main__":
    sys.exit(main())
