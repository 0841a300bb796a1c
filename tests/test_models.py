"""Model registry: output shapes, in-model normalization, foreign state dicts."""

import pytest
import torch

from robust_ebm.errors import UserError
from robust_ebm.models import create_model, list_models, load_foreign_state_dict

# Wide networks are heavy on 2 CPU cores; shrink them for shape checks.
SMALL_KWARGS = {"wide_resnet": {"depth": 10, "widen_factor": 1},
                "dm_wide_resnet": {"depth": 10, "widen_factor": 1}}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes,in_channels,size", [(10, 3, 32), (7, 1, 28)])
def test_output_shapes(name, num_classes, in_channels, size):
    if name.startswith("wide_resnet") and name != "wide_resnet" and size == 28:
        pytest.skip("full-size WRN covered once at 32x32")
    torch.manual_seed(0)
    kwargs = dict(SMALL_KWARGS.get(name, {}))
    if name == "mlp":
        kwargs["image_size"] = size
    model = create_model(name, num_classes, in_channels, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_wide_resnet_depths():
    for name, depth in (("wide_resnet28_10", 28), ("wide_resnet34_10", 34)):
        net = create_model(name).net
        n_blocks = sum(len(b.layer) for b in (net.block1, net.block2, net.block3))
        assert n_blocks * 2 + 4 == depth


def test_normalization_inside_model():
    mean, std = [0.5], [0.25]
    model = create_model("small_cnn", 10, 1, mean, std).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - 0.5) / 0.25))


@pytest.mark.parametrize("bad", [
    dict(name="nope"), dict(name="small_cnn", num_classes=0),
    dict(name="small_cnn", in_channels=1, mean=[0.1, 0.2]),
    dict(name="small_cnn", in_channels=1, std=[0.0]),
    dict(name="wide_resnet", depth=11),
])
def test_bad_arguments(bad):
    with pytest.raises(UserError):
        create_model(**bad)


def test_foreign_state_dict_strips_prefixes():
    src = create_model("preact_resnet18", 10, 3)
    dst = create_model("preact_resnet18", 10, 3)
    foreign = {"module." + k: v for k, v in src.net.state_dict().items()}
    report = load_foreign_state_dict(dst, foreign)
    assert report == {"missing": [], "unexpected": []}
    for k, v in src.net.state_dict().items():
        assert torch.equal(v, dst.net.state_dict()[k])


def test_foreign_state_dict_reports_keys():
    dst = create_model("small_cnn", 10, 1)
    sd = dict(dst.net.state_dict())
    sd.pop("classifier.3.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"missing keys \[classifier.3.bias\].*extra.weight"):
        load_foreign_state_dict(dst, sd)
    report = load_foreign_state_dict(dst, sd, strict=False)
    assert report == {"missing": ["classifier.3.bias"], "unexpected": ["extra.weight"]}
    with pytest.raises(UserError, match="shape mismatch"):
        load_foreign_state_dict(create_model("small_cnn", 5, 1), dst.net.state_dict())
