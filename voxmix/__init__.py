"""voxmix: transfer-aware data mixtures for 3D medical imaging foundation models.

The repository keeps its top-level folders; installed, they live under this namespace (setup.py maps
them): `voxmix.formats` (exchange formats), `voxmix.kernels` (Triton/C++ ops), `voxmix.trainer` (data,
pretraining, downstream, study) and `voxmix.lawfit` (laws, fitting, allocation). See docs/architecture.md.
"""

__version__ = "0.1.0"
