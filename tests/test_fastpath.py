"""Fast paths (robust_ebm.fastpath, the loader's host-resident mode) against the plain path.

Tolerances stated per test; each fast path must give the plain path's answer within them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robust_ebm.attacks import make_attack
from robust_ebm.data.dataset import ImageDataset
from robust_ebm.data.loader import Augment, TensorLoader
from robust_ebm.errors import UserError
from robust_ebm.fastpath import FastModel, base_model, wrap_model
from robust_ebm.models import create_model


def _pair(arch: str = "small_cnn", channels: int = 3):
    """Two copies of one random-weight model (one to wrap, one plain), eval mode."""
    torch.manual_seed(0)
    plain = create_model(arch, num_classes=10, in_channels=channels).eval()
    other = create_model(arch, num_classes=10, in_channels=channels).eval()
    other.load_state_dict(plain.state_dict())
    return plain, other


def _batch(n: int = 16, channels: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def test_no_option_is_the_model_itself():
    plain, _ = _pair()
    assert wrap_model(plain) is plain
    assert base_model(plain) is plain


def test_bad_options_are_user_errors():
    plain, _ = _pair()
    with pytest.raises(UserError, match="precision must be one of"):
        wrap_model(plain, precision="fp8")
    with pytest.raises(UserError, match="need compile=True"):
        wrap_model(plain, compile_mode="max-autotune")


def test_channels_last_matches_plain_path():
    """Tolerance: logits within 1e-5 relative; a PGD-10 run lands on the same points in at
    least 99% of the pixels (the arithmetic is the same up to summation order)."""
    plain, other = _pair()
    fast = wrap_model(other, channels_last=True)
    assert isinstance(fast, FastModel) and base_model(fast) is other
    x, y = _batch()
    assert _rel(fast(x), plain(x)) < 1e-5
    attack = make_attack("pgd", eps=8 / 255, steps=10, seed=0)
    same = (attack(fast, x, y) == attack(plain, x, y)).float().mean()
    assert same >= 0.99


def test_bf16_gives_float32_logits_and_an_attack_as_strong():
    """Tolerance: bf16 logits within 3% of the largest fp32 logit; the bf16 attack raises the
    fp32 model's CE by at least 90% of what the fp32 attack raises it; parameters stay fp32."""
    plain, other = _pair()
    fast = wrap_model(other, precision="bf16")
    x, y = _batch(32)
    logits = fast(x)
    assert logits.dtype == torch.float32 and _rel(logits, plain(x)) < 0.03
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    attack = make_attack("pgd", eps=8 / 255, steps=10, seed=0)
    with torch.no_grad():
        ce = [F.cross_entropy(plain(z), y).item() for z in (x, attack(plain, x, y), attack(fast, x, y))]
    gain_fp32, gain_bf16 = ce[1] - ce[0], ce[2] - ce[0]
    assert gain_fp32 > 0 and gain_bf16 >= 0.9 * gain_fp32


def test_wrapped_model_mode_and_grad_flags_restored_by_attacks():
    _, other = _pair()
    other.train()
    fast = wrap_model(other, precision="bf16", channels_last=True)
    x, y = _batch(4)
    make_attack("apgd_ce", eps=8 / 255, steps=3, seed=0)(fast, x, y)
    assert all(m.training for m in other.modules())
    assert all(p.requires_grad and p.grad is None for p in other.parameters())


def test_bf16_training_step_updates_float32_weights():
    _, other = _pair()
    fast = wrap_model(other, precision="bf16").train()
    before = [p.detach().clone() for p in other.parameters()]
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    x, y = _batch(8)
    F.cross_entropy(fast(x), y).backward()
    opt.step()
    assert all(p.dtype == torch.float32 for p in other.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, other.parameters()))


def test_compile_plumbing_with_eager_backend_is_exact():
    """The 'eager' backend traces with dynamo and runs the same kernels: exact equality."""
    plain, other = _pair()
    fast = wrap_model(other, compile=True, compile_backend="eager")
    assert base_model(fast) is other
    x, y = _batch(8)
    assert torch.equal(fast(x), plain(x))
    attack = make_attack("pgd", eps=8 / 255, steps=3, seed=0)
    assert torch.equal(attack(fast, x, y), attack(plain, x, y))


@pytest.mark.slow
def test_inductor_compile_matches_plain_path():
    """Tolerance: logits within 1e-4 relative; PGD-3 iterates equal in >= 99% of the pixels.
    Slow: inductor compiles forward and backward, about 2.5 minutes on one loaded CPU core."""
    plain, other = _pair(channels=1)
    fast = wrap_model(other, compile=True)
    x, y = _batch(8, channels=1, size=28)
    assert _rel(fast(x), plain(x)) < 1e-4
    attack = make_attack("pgd", eps=8 / 255, steps=3, seed=0)
    assert (attack(fast, x, y) == attack(plain, x, y)).float().mean() >= 0.99


def _dataset(n: int = 37) -> ImageDataset:
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.randint(0, 10, (n,), generator=g), 10, "t",
                        (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("world", [1, 2])
def test_host_resident_loader_yields_the_same_batches(world):
    """Exact: the host-resident path (pinned copies on CUDA) changes where data lives only."""
    ds, aug = _dataset(), Augment(crop_padding=2, flip=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for rank in range(world):
        kw = dict(batch_size=8, seed=3, augment=aug, rank=rank, world_size=world, device=device)
        a = list(TensorLoader(ds, **kw).iterate(1))
        b = list(TensorLoader(ds, host_resident=True, **kw).iterate(1))
        assert len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xb.device == xa.device and torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_paths_match_fp32():
    """On CUDA, ResNet-18: channels_last within 1e-3 relative (cuDNN picks other kernels,
    TF32 allowed), bf16 and compiled bf16 within 3e-2; the loader's pinned path is exact."""
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=10).cuda().eval()
    x = torch.rand(64, 3, 32, 32, device="cuda")
    with torch.no_grad():
        ref = plain(x)
        variants = {
            "channels_last": (dict(channels_last=True), 1e-3),
            "bf16": (dict(precision="bf16"), 3e-2),
            "compiled_bf16": (dict(precision="bf16", compile=True), 3e-2),
        }
        for name, (kw, tol) in variants.items():
            other = create_model("resnet18", num_classes=10).cuda().eval()
            other.load_state_dict(plain.state_dict())
            out = wrap_model(other, **kw)(x)
            assert out.dtype == torch.float32 and _rel(out, ref) < tol, name
