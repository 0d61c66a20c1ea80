"""UNETR and the classifier load our encoder: every key, the values, and the weights are really used."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR

from tests.trainer.downstream.downstream_helpers import make_encoder
from voxmix.formats.encoder import FORMAT, EncoderError, read_encoder
from voxmix.trainer.downstream.models import (
    PatchUNETR,
    ViTClassifier,
    build_segmenter,
    build_vit,
    check_encoder,
)
from voxmix.trainer.pretrain.config import ModelConfig
from voxmix.trainer.pretrain.model import MAE3D

# UNETR's own geometry (MONAI 1.6 hard-codes patch 16 and 12 layers), kept narrow for the CPU.
UNETR_GEOMETRY = dict(patch=16, depth=12, width=48, heads=3)


def _perturbed(blob: dict) -> dict:
    sd = {k: v + 0.05 * torch.randn_like(v) if "blocks.1." in k else v for k, v in blob["state_dict"].items()}
    return {**blob, "state_dict": sd}


@pytest.mark.parametrize("geometry", ["unetr", "tiny"])
def test_segmenter_loads_encoder_and_uses_it(tmp_path, geometry):
    extra = UNETR_GEOMETRY if geometry == "unetr" else {}
    blob = read_encoder(make_encoder(tmp_path / "e.pt", **extra))
    net = build_segmenter(blob, 3, feature_size=4)
    assert isinstance(net, UNETR if geometry == "unetr" else PatchUNETR)
    # Strict load: the ViT's keys are exactly the exported ones, with the exported values.
    got = net.vit.state_dict()
    assert set(got) == set(blob["state_dict"])
    missing, unexpected = net.vit.load_state_dict(blob["state_dict"], strict=True)
    assert missing == [] and unexpected == []
    for k, v in blob["state_dict"].items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    x = torch.rand(1, 1, 32, 32, 32)
    outs = []
    for b in (blob, blob, _perturbed(blob)):
        torch.manual_seed(0)  # the same decoder initialization every time
        outs.append(build_segmenter(b, 3, feature_size=4).eval()(x))
    assert outs[0].shape == (1, 3, 32, 32, 32)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert (outs[0] - outs[2]).abs().max() > 1e-4, "changing encoder weights must change the output"
    torch.manual_seed(0)
    scratch = build_segmenter(blob, 3, feature_size=4, pretrained=False).eval()(x)
    assert (outs[0] - scratch).abs().max() > 1e-4


def test_patch_unetr_is_unetr_at_unetr_geometry(tmp_path):
    """At patch 16 / 12 layers the generalized network has UNETR's modules and parameter shapes."""
    blob = read_encoder(make_encoder(tmp_path / "e.pt", **UNETR_GEOMETRY))
    ours = PatchUNETR(build_vit(blob), in_channels=1, out_channels=3, img=32, patch=16, feature_size=4)
    ref = build_segmenter(blob, 3, feature_size=4)
    assert ours.taps == [3, 6, 9]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(1, 1, 32, 32, 32)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_loaded_vit_equals_pretraining_encoder(tmp_path):
    """MONAI's ViT with our weights computes what MAE3D's encoder computed (all tokens visible)."""
    torch.manual_seed(3)
    mae = MAE3D(ModelConfig(size="tiny", reference=True)).eval()
    from voxmix.trainer.pretrain.model import export_encoder

    export_encoder(mae, tmp_path / "e.pt")
    vit = build_vit(read_encoder(tmp_path / "e.pt")).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit(x)[0], mae.encode(x), rtol=1e-4, atol=1e-4)
        clf = ViTClassifier(vit, 2)
        torch.testing.assert_close(clf.features(x), mae.encode(x).mean(1), rtol=1e-4, atol=1e-4)


def test_bad_encoder_file(tmp_path):
    torch.save({"format": "voxmix.other/1"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="'format'"):
        read_encoder(tmp_path / "bad.pt")


@pytest.mark.parametrize(
    "change, why",
    [
        ({"mlp": 7}, "the weights do not fit the architecture in monai_vit_kwargs: "
                     "blocks.0.mlp.linear1.weight: shape (7, 96), expected (384, 96)"),
        ({"num_layers": 2}, "monai_vit_kwargs (num_layers 2, hidden_size 96) do not match the weights (3 blocks"),
        ({"hidden_size": 90}, "do not match the weights (3 blocks, norm.weight of shape (96,))"),
        ({"num_heads": 5}, "MONAI's ViT cannot be built from monai_vit_kwargs"),
        ({"patch_size": [8, 8, 4]}, "monai_vit_kwargs.patch_size: only cubic sizes are supported"),
        ({"in_channels": 2}, "monai_vit_kwargs.in_channels is 2; the volumes have 1"),
    ],
)  # fmt: skip
def test_check_encoder_names_weights_that_do_not_fit(tiny_encoder, tmp_path, change, why):
    """Readable files whose weights and monai_vit_kwargs disagree (defect 14 of #15) fail the up-front
    check with the file named, before any network is built (the ViT is built on the meta device)."""
    blob = read_encoder(tiny_encoder)
    check_encoder(blob, tiny_encoder, segment=True)  # the untouched file passes
    kw, sd = dict(blob["monai_vit_kwargs"]), dict(blob["state_dict"])
    if "mlp" in change:
        sd["blocks.0.mlp.linear1.weight"] = sd["blocks.0.mlp.linear1.weight"][: change.pop("mlp")]
    kw.update(change)
    torch.save({"format": FORMAT, "monai_vit_kwargs": kw, "state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(EncoderError) as err:
        check_encoder(read_encoder(tmp_path / "bad.pt"), tmp_path / "bad.pt", segment=True)
    assert str(err.value).startswith(f"{tmp_path / 'bad.pt'}: ") and why in str(err.value), err.value
