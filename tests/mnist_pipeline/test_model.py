"""LeNet-5 shape, size and file format."""

from __future__ import annotations

from pathlib import Path

import torch

from mnist_pipeline.model import (
    LeNet5,
    Widths,
    count_params,
    load_model,
    predict_logits,
    save_model,
    widths_of,
)


def test_classic_lenet5_size_and_shapes() -> None:
    net = LeNet5()
    assert count_params(net) == 61_706
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert net.features(torch.zeros(1, 1, 28, 28)).shape == (1, 16, 5, 5)  # flattens to 400


def test_pool_then_relu_is_the_classic_relu_then_pool() -> None:
    """The model pools before its ReLUs for speed; outputs and gradients are those of the
    textbook order."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = LeNet5()
    f = net.features
    x = torch.randn(8, 1, 28, 28)

    def classic(x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(f[0](x)), 2)
        return net.classifier(F.max_pool2d(F.relu(f[3](h)), 2))

    out, ref = net(x), classic(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grads = [torch.autograd.grad(y.square().sum(), f[0].weight)[0] for y in (out, ref)]
    torch.testing.assert_close(grads[0], grads[1])


def test_save_load_round_trip_with_other_widths(tmp_path: Path) -> None:
    net = LeNet5(Widths(conv1=3, conv2=8, fc1=30, fc2=20))
    save_model(net, tmp_path / "m.pt", meta={"mean": 0.1, "std": 0.3})
    back, meta = load_model(tmp_path / "m.pt")
    assert widths_of(back) == Widths(3, 8, 30, 20) and meta == {"mean": 0.1, "std": 0.3}
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(back(x), net.eval()(x))
    # Loads with weights_only=True: no arbitrary unpickling.
    torch.load(tmp_path / "m.pt", weights_only=True)


def test_predict_logits_batches_and_restores_mode() -> None:
    net = LeNet5().train()
    x = torch.randn(10, 1, 28, 28)
    out = predict_logits(net, x, batch_size=3)
    assert net.training
    torch.testing.assert_close(out, net.eval()(x))
