"""Backbones sized for CPU runs: ``small_cnn`` and ``resnet_small`` (CIFAR-style ResNet)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from harness.registry import MODELS


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


@MODELS.register("small_cnn")
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """Four conv-BN-ReLU blocks and a linear head; sized for MNIST-scale inputs on a CPU."""
    return nn.Sequential(
        OrderedDict(
            stem=_conv_bn_relu(in_channels, width, 1),
            block1=_conv_bn_relu(width, 2 * width, 2),
            block2=_conv_bn_relu(2 * width, 4 * width, 2),
            block3=_conv_bn_relu(4 * width, 4 * width, 1),
            # no parameters, so strategies never see it; the head gets a feature vector
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            head=nn.Linear(4 * width, num_classes),
        )
    )


@MODELS.register("resnet_small")
def resnet_small(in_channels: int = 3, num_classes: int = 10, depth: int = 8,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> nn.Sequential:
    """CIFAR ResNet-8 (He et al. 2016, sec. 4.2): stem, layer1-3, pool, head; 78k parameters.

    ``depth = 6n + 2``: 8 trains quickly on two CPU cores at 28-32 px; 20 and 56 are the paper's.
    """
    from torchvision.models.resnet import BasicBlock  # torchvision loads torch._dynamo (2 s)

    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), but got {depth=}.")
    n, c = (depth - 2) // 6, widths[0]
    layers = OrderedDict()
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        # a 1x1 projection where the shape changes (the paper's option B)
        down = None if stride == 1 and c == width else nn.Sequential(
            nn.Conv2d(c, width, 1, stride, bias=False), nn.BatchNorm2d(width))
        layers[f"layer{i + 1}"] = nn.Sequential(
            BasicBlock(c, width, stride, down), *[BasicBlock(width, width) for _ in range(n - 1)])
        c = width
    model = nn.Sequential(OrderedDict(
        stem=_conv_bn_relu(in_channels, widths[0], 1),
        **layers,
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        head=nn.Linear(c, num_classes),
    ))
    for m in model.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
