"""The exchange formats between voxmix's stages, each owned by one module here (docs/formats.md).

manifest (ingest -> loader), plan (lawfit plan -> sweep), run log (trainer -> lawfit), laws (lawfit fit ->
allocate), allocation (lawfit allocate -> trainer), encoder (trainer -> downstream), labels (downstream).
Every module has a typed reader that validates (naming the file, line and field at fault) and a writer
that writes atomically (`io`). Nothing else in voxmix parses these files; this package imports nothing
from the rest of voxmix, so lawfit can use it without the trainer.
"""
