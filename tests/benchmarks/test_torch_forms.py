"""The eager-torch inference forms the speed benchmark times compute the unpruned
function: channels_last and batch norm folded into the convolutions change speed only."""

from __future__ import annotations

import torch
from benchmarks.bench_torch_forms import FORMS, forms

from taperprune.models import demo_cnn


def test_every_form_computes_the_same_function() -> None:
    torch.manual_seed(0)
    model = demo_cnn(in_channels=1, num_classes=10)
    model.train()
    for _ in range(3):  # non-trivial BN statistics
        model(torch.randn(16, 1, 28, 28))
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        built = forms(model)
        assert tuple(built) == FORMS
        for name, (module, cl) in built.items():
            got = module(x.contiguous(memory_format=torch.channels_last) if cl else x)
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=name)
        for name, (module, cl) in built.items():  # the channels_last forms really are
            convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
            conv = next(m for m in convs if m.in_channels > 1)  # 1 input channel: both layouts
            assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cl, name
        folded, _ = built["bn_folded"]
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
