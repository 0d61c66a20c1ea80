"""voxmix: transfer-aware data mixtures for 3D medical imaging foundation models.

The repository keeps its top-level folders; installed, they live under this namespace (setup.py maps
them): `voxmix.formats` (exchange formats), `voxmix.kernels` (Triton/C++ ops), `voxmix.trainer` (data,
pretraining, downstream, study) and `voxmix.lawfit` (laws, fitting, allocation). See docs/architecture.md.
"""

import os as _os

__version__ = "0.1.0"

# A source checkout used without installing it (PYTHONPATH=<repo>, e.g. the GPU check, which builds the
# C++ ops in place and installs nothing): the subpackages are this folder's siblings. Installed (wheel
# or editable), setup.py's mapping finds them and this does not apply: a wheel has no setup.py here.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "setup.py")) and _os.path.isdir(_os.path.join(_root, "formats")):
    __path__.append(_root)  # noqa: F821 - a package's __path__, set by the import system
