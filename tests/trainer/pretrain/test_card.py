"""The shareable encoder files (trainer/pretrain/card.py): safetensors + torch weights, encoder.json and
MODEL_CARD.md; checked with safetensors', torch's and MONAI's own readers, and hashlib."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from monai.networks.nets import ViT
from safetensors import safe_open
from safetensors.torch import load_file

import voxmix
from voxmix.formats.allocation import read_allocation
from voxmix.formats.encoder import EncoderError, read_card, read_encoder, write_encoder
from voxmix.formats.manifest import read_manifest, write_manifest
from voxmix.trainer.pretrain.card import write_encoder_files
from voxmix.trainer.pretrain.config import Config, ModelConfig
from voxmix.trainer.pretrain.model import MAE3D, encoder_state_dict_for_monai, load_monai_vit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/trainer/pretrain/conftest.py

# The PyTorch reference ops: what is tested here is the export, not the kernels (and no kernel warm-up).
SMALL = dict(
    reference=True,
    size="tiny",
    crop=24,
    patch=8,
    width=48,
    depth=2,
    heads=2,
    dec_width=32,
    dec_depth=1,
    dec_heads=2,
)
SPEC = {
    "domains": {
        "ct_abdomen": {
            "modality": "CT",
            "sources": ["ct/*.nii.gz"],
            "window": [-200, 300],
            "spacing": [2, 2, 3],
        },
        "mri_brain": {
            "modality": "MRI",
            "sources": ["mri/"],
            "percentiles": [1, 99],
            "spacing": None,
            "margin": 4,
        },
    }
}


@pytest.fixture(scope="module")
def written(dataset, tmp_path_factory):
    """A run folder written by write_encoder_files, from a manifest whose header names its ingest spec."""
    src_manifest, alloc_path = dataset
    root = tmp_path_factory.mktemp("card")
    (root / "dataset.yaml").write_text(yaml.safe_dump(SPEC))
    manifest_path = write_manifest(
        root / "manifest.jsonl", read_manifest(src_manifest).records, {"spec": str(root / "dataset.yaml")}
    )
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(**SMALL))
    model = MAE3D(cfg.model).eval()
    alloc = read_allocation(alloc_path)
    paths = write_encoder_files(
        root / "run", model, cfg, alloc, read_manifest(manifest_path), "run-7", 24, budget=192
    )
    return root, model, alloc, paths


def test_encoder_files_hold_the_same_weights_and_an_honest_card(written):
    root, model, alloc, paths = written
    run = root / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "MODEL_CARD.md",
        "encoder.json",
        "encoder.pt",
        "encoder.safetensors",
    ]
    want = encoder_state_dict_for_monai(model)
    st = load_file(run / "encoder.safetensors")  # safetensors' own reader
    pt = torch.load(run / "encoder.pt", weights_only=True)["state_dict"]
    assert sorted(st) == sorted(pt) == sorted(want)
    assert all(torch.equal(st[k], want[k]) and torch.equal(pt[k], want[k]) for k in want)
    card = read_card(run)
    with safe_open(str(run / "encoder.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == card["format"] == "voxmix.encoder/1"
    assert json.loads(meta["monai_vit_kwargs"]) == card["monai_vit_kwargs"]
    # Without voxmix: MONAI's ViT from the card's kwargs takes the safetensors file strictly.
    vit = ViT(**card["monai_vit_kwargs"]).eval()
    vit.load_state_dict(st, strict=True)
    x = torch.rand(1, 1, 24, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(vit(x)[0], model.encode(x), rtol=1e-4, atol=1e-5)

    for name in ("encoder.safetensors", "encoder.pt"):
        data = (run / name).read_bytes()
        assert card["weights"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (
        card["data"]["manifest_sha256"] == hashlib.sha256((root / "manifest.jsonl").read_bytes()).hexdigest()
    )
    assert card["data"]["spec_sha256"] == hashlib.sha256((root / "dataset.yaml").read_bytes()).hexdigest()
    assert (card["run_id"], card["step"], card["voxmix_version"]) == ("run-7", 24, voxmix.__version__)
    assert card["torch_version"] == torch.__version__
    tr = card["training"]
    assert (tr["budget_samples"], tr["seed"], tr["mixture"], tr["samples"]) == (
        192,
        0,
        alloc.weights,
        alloc.samples,
    )
    ct, mri = card["preprocessing"]["ct_abdomen"], card["preprocessing"]["mri_brain"]
    assert (
        ct["modality"] == "CT"
        and ct["intensity"]["window_hu"] == [-200, 300]
        and ct["spacing_mm"] == [2, 2, 3]
    )
    assert mri["intensity"]["percentiles"] == [1, 99] and mri["spacing_mm"] == "native"
    assert mri["foreground_crop_margin"] == 4 and ct["volumes"] == {"train": 6, "val": 2}

    text = (run / "MODEL_CARD.md").read_text()
    for needle in (
        "# voxmix encoder `run-7`",
        "load_monai_vit('.')",
        "CT window [-200, 300] HU -> [0, 1]",
        "resample to 2 x 2 x 3 mm",
        "foreground percentiles [1, 99] -> [0, 1]",
        "resample to each scan's own",
        "| ct_abdomen | 0.5000 | 96 |",
        f"sha256 `{card['weights']['encoder.safetensors']['sha256']}`",
    ):
        assert needle in text, needle


def test_a_folder_loads_only_weights_that_match_its_card(written, tmp_path):
    root, model, _, _ = written
    run = tmp_path / "run"
    run.mkdir()
    for p in (root / "run").iterdir():
        (run / p.name).write_bytes(p.read_bytes())
    x = torch.rand(1, 1, 24, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(load_monai_vit(run).eval()(x)[0], model.encode(x), rtol=1e-4, atol=1e-5)
    # Weights replaced after the card was written (same architecture, other values): refused by name.
    blob = read_encoder(run / "encoder.safetensors")
    other = {k: v + 1 for k, v in blob["state_dict"].items()}
    write_encoder(run / "encoder.safetensors", blob["monai_vit_kwargs"], other)
    with pytest.raises(EncoderError, match=r"encoder\.safetensors: sha256 .* recorded in .*encoder\.json"):
        load_monai_vit(run)
    # Without the card and the safetensors file, the folder's encoder.pt is read.
    (run / "encoder.json").unlink()
    (run / "encoder.safetensors").unlink()
    assert read_encoder(run)["step"] == 24
    (run / "encoder.pt").unlink()
    with pytest.raises(EncoderError, match="is a folder without encoder.safetensors or encoder.pt"):
        read_encoder(run)
    (run / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(EncoderError, match=r"junk\.safetensors: not a readable safetensors file"):
        read_encoder(run / "junk.safetensors")


@pytest.mark.parametrize(
    "change,field",
    [
        ({"format": "voxmix.encoder/2"}, "format"),
        ({"step": -1}, "step"),
        ({"monai_vit_kwargs": {"hidden_size": 48}}, "monai_vit_kwargs.in_channels"),
        ({"weights": {"encoder.safetensors": {"size": 1, "sha256": "abc"}}}, "weights.encoder.safetensors"),
        ({"weights": {"model.bin": {"size": 1, "sha256": "0" * 64}}}, "weights"),
        ({"preprocessing": {"ct_abdomen": {"modality": "XR"}, "mri_brain": {"modality": "MRI"}}}, "modality"),
        ({"training": {"budget_samples": 8, "seed": 0, "mixture": {"ct_abdomen": 1.0}}}, "training.mixture"),
        ({"data": {"manifest_sha256": "xyz"}}, "data.manifest_sha256"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_read_card_names_the_file_and_field(written, tmp_path, change, field):
    root = written[0]
    card = json.loads((root / "run" / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps({**card, **change}))
    with pytest.raises(EncoderError, match=rf"encoder\.json: field '[^']*{field}"):
        read_card(tmp_path)


def test_card_without_a_readable_spec_says_so(dataset, tmp_path):
    manifest, alloc = dataset  # written without a spec in the header, as by hand or by another tool
    cfg = Config(model=ModelConfig(**SMALL))
    write_encoder_files(
        tmp_path, MAE3D(cfg.model), cfg, read_allocation(alloc), read_manifest(manifest), "r", 1
    )
    ct = read_card(tmp_path)["preprocessing"]["ct_abdomen"]
    assert ct["intensity"]["window_hu"] is None and ct["spacing_mm"] is None
    assert ct["settings_from"] == "unknown: the manifest's header names no ingest spec"
    assert ct["observed_spacing_mm"] is not None
