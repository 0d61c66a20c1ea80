"""Builds voxmix's C++ ops (csrc/ -> kernels._C) with torch.utils.cpp_extension and ninja.

It also maps the repository's top-level folders to the installed `voxmix` namespace (formats/ ->
voxmix.formats, kernels/ -> voxmix.kernels, ...): generic names such as `kernels` and `trainer` belong to
other distributions on the package index and must never be installed at top level. Everything else
(metadata, dependencies) lives in pyproject.toml. The build needs the torch
already installed (`pip install --no-build-isolation -e ".[train,dev]"`, see the Makefile). A failed
or skipped build never fails the install: kernels/_ext.py then falls back to PyTorch with a warning.
Set VOXMIX_NO_EXT=1 to skip the build.
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("VOXMIX_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("voxmix: torch is not importable: skipping csrc/ (install torch first)", file=sys.stderr)
        return [], {}

    class LenientBuild(BuildExtension.with_options(use_ninja=True)):
        """Reports a compiler failure and carries on: the ops then use the PyTorch fallback."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as err:  # noqa: BLE001 - any build failure must not block the install
                print(
                    f"voxmix: WARNING: building {ext.name} failed ({err}); using PyTorch fallbacks",
                    file=sys.stderr,
                )

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/*/*_cpu.cpp")
    cuda_sources = rel("csrc/*/*_cuda.cu")
    # CUDA sources only when this torch is a CUDA build and nvcc is there; the CPU build of torch
    # cannot link them even where nvcc exists.
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
    # -fopenmp: at::parallel_for is inline OpenMP in ATen's headers; without it the loops run serially.
    args = {"cxx": ["-O3", "-fopenmp"]}
    if with_cuda:
        args["nvcc"] = ["-O3", "--use_fast_math"]
        ext = CUDAExtension(
            "voxmix.kernels._C",
            sources + cuda_sources,
            extra_compile_args=args,
            extra_link_args=["-fopenmp"],
            define_macros=[("VOXMIX_WITH_CUDA", None)],
        )
    else:
        ext = CppExtension(
            "voxmix.kernels._C", sources, extra_compile_args=args, extra_link_args=["-fopenmp"]
        )
    return [ext], {"build_ext": LenientBuild}


# voxmix/ holds only the namespace's __init__; each of these folders becomes voxmix.<folder>.
FOLDERS = ("formats", "kernels", "lawfit", "trainer")


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = ["voxmix"], {"voxmix": "voxmix"}
    for folder in FOLDERS:
        package_dir[f"voxmix.{folder}"] = folder
        for init in sorted(glob.glob(os.path.join(ROOT, folder, "**", "__init__.py"), recursive=True)):
            rel = os.path.relpath(os.path.dirname(init), ROOT)
            packages.append("voxmix." + rel.replace(os.sep, "."))
    return packages, package_dir


packages, package_dir = _packages()
ext_modules, cmdclass = _extensions()
setup(packages=packages, package_dir=package_dir, ext_modules=ext_modules, cmdclass=cmdclass)
