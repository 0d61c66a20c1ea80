"""The trainer: data (ingest, phantoms, loading), pretrain, downstream and study packages.

The modules directly in this folder are the commands (`deepspeed trainer/run.py`, `python -m
trainer.ingest`, `.sweep`, `.phantoms`, `.finetune`, `.compare_encoders`): argument parsing and
nothing else. They import the packages only as `voxmix.trainer...`, so running them by their short
names from the repository gives the same modules as the installed `python -m voxmix.trainer...`.
"""
