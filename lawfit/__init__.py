"""lawfit: transfer-aware scaling laws for multi-domain pretraining, and the data allocation they imply.

Pure CPU (NumPy/SciPy); usable on its own by any trainer that writes run logs in the `voxmix.runlog/1`
format (docs/formats.md).
"""

__version__ = "0.1.0"
