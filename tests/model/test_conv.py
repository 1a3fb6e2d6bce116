import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swav.model.conv import TAP_MAX_PIXELS, Conv2d, tap_conv2d


def _grads(fn, x, w, b):
    y = fn(x, w, b)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)
    return (y, *torch.autograd.grad(y, (x, w, b), g))


CASES = [
    # (h, w, kernel, stride, padding): the ResNet cases and odd ones
    (1, 1, 3, 1, 1),
    (2, 2, 3, 1, 1),
    (4, 4, 3, 1, 1),
    (2, 2, 3, 2, 1),
    (4, 4, 3, 2, 1),
    (3, 3, 3, 1, 1),
    (4, 4, 1, 2, 0),
    (1, 1, 1, 1, 0),
    (3, 4, 5, 1, 2),
    (4, 3, 3, 2, 0),
    (2, 3, 5, 2, 2),
    (1, 4, 3, 1, 2),
]


@pytest.mark.parametrize("h,w,k,s,p", CASES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_tap_conv_equals_conv2d_with_gradients(h, w, k, s, p, channels_last):
    g = torch.Generator().manual_seed(h * 100 + w * 10 + k)
    x = torch.randn(3, 5, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(7, 5, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        wt = wt.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    wt.requires_grad_()
    b.requires_grad_()
    ref = _grads(lambda x, w, b: F.conv2d(x, w, b, s, p), x, wt, b)
    got = _grads(lambda x, w, b: tap_conv2d(x, w, b, s, p), x, wt, b)
    for r, o in zip(ref, got):
        assert r.shape == o.shape
        assert torch.allclose(r, o, atol=1e-12), (h, w, k, s, p)


def test_kernel_larger_than_the_padded_input_is_an_error():
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        tap_conv2d(torch.randn(1, 2, 4, 2), torch.randn(3, 2, 3, 3), None, 1, 0)


def test_input_gradient_only_and_weight_gradient_only():
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(tap_conv2d(x, w.detach(), None, 1, 1).sum(), x)
    (gw,) = torch.autograd.grad(tap_conv2d(x.detach(), w, None, 1, 1).sum(), w)
    rx, rw = torch.autograd.grad(F.conv2d(x, w, None, 1, 1).sum(), (x, w))
    assert torch.allclose(gx, rx) and torch.allclose(gw, rw)


def test_unread_taps_get_zero_gradient():
    # on a 1 x 1 map only the centre tap of a padded 3 x 3 kernel reads the input
    x = torch.randn(4, 3, 1, 1, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    (gw,) = torch.autograd.grad(tap_conv2d(x, w, None, 1, 1).sum(), w)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1, 1] = True
    assert torch.count_nonzero(gw[:, :, ~mask]) == 0
    assert torch.allclose(gw[:, :, 1, 1], x.detach().flatten(1).sum(0).expand(5, 3))


def test_autocast_computes_in_the_autocast_dtype():
    x = torch.randn(2, 8, 2, 2)
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tap_conv2d(x, w, None, 1, 1)
        ref = F.conv2d(x, w, None, 1, 1)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref.float(), atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def test_conv2d_module_takes_the_tap_path_for_small_outputs_only():
    conv = Conv2d(6, 6, 3, 1, 1, bias=False)
    down = Conv2d(6, 6, 3, 2, 1, bias=False)
    small = torch.randn(2, 6, 3, 3, requires_grad=True)
    large = torch.randn(2, 6, 4, 4, requires_grad=True)
    assert 3 * 3 <= TAP_MAX_PIXELS < 4 * 4
    assert type(conv(small).grad_fn).__name__ == "_TapConvBackward"
    assert type(conv(large).grad_fn).__name__ != "_TapConvBackward"
    # a 6 x 6 map at stride 2 gives a 3 x 3 output: tap path
    assert type(down(torch.randn(2, 6, 6, 6)).grad_fn).__name__ == "_TapConvBackward"
    ref = nn.Conv2d(6, 6, 3, 1, 1, bias=False)
    ref.load_state_dict(conv.state_dict())
    for x in (small, large):
        assert torch.allclose(conv(x), ref(x), atol=1e-5)


def test_conv2d_module_keeps_nn_conv2d_keys_and_other_options():
    conv = Conv2d(4, 4, 3, 1, 1, groups=2)
    assert isinstance(conv, nn.Conv2d)
    assert set(conv.state_dict()) == {"weight", "bias"}
    x = torch.randn(1, 4, 2, 2)
    # grouped convolutions are left to nn.Conv2d
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, 1, 1, 2))


def test_resnet_gradients_equal_with_and_without_the_tap_path(monkeypatch):
    import swav.model.conv as conv_module
    from swav.model import build_model

    torch.manual_seed(0)
    model = build_model("resnet_tiny", hidden_mlp=16, output_dim=8, n_prototypes=5).double()
    crops = [torch.randn(4, 3, 32, 32, dtype=torch.float64) for _ in range(2)]
    crops += [torch.randn(4, 3, 16, 16, dtype=torch.float64) for _ in range(2)]

    def grads():
        model.zero_grad()
        model(crops).scores[0].square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    with_tap = grads()
    monkeypatch.setattr(conv_module, "TAP_MAX_PIXELS", 0)
    without = grads()
    for a, b in itertools.zip_longest(with_tap, without):
        assert torch.allclose(a, b, atol=1e-9)
