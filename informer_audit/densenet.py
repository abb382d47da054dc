"""DenseNet121 in plain torch, with torchvision's exact ``state_dict`` keys.

torchvision does not import beside the CPU torch builds these projects install (its compiled
operators are tied to one torch build), yet checkpoints of the reference model are torchvision
``densenet121`` state dicts. This module rebuilds the same network from torchvision's documented
architecture (Huang et al. 2017; ``torchvision.models.densenet``): growth rate 32, block config
(6, 12, 24, 16), bottleneck factor 4, 64 initial features, a linear ``classifier`` on the 1024
pooled features. Module names, parameter and buffer names, shapes and the forward pass are
torchvision's, so a torchvision checkpoint loads here unchanged (727 keys) and the outputs are the
same. :func:`densenet121` uses torchvision's own class when it does import.

Importing this module imports torch; the rest of :mod:`informer_audit` only imports it lazily.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

GROWTH_RATE = 32
BLOCK_CONFIG = (6, 12, 24, 16)
NUM_INIT_FEATURES = 64
BN_SIZE = 4


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 bottleneck then BN-ReLU-Conv3x3, on the concatenation of all inputs."""

    def __init__(
        self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(
            num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False
        )
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = float(drop_rate)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        concatenated = torch.cat(inputs, 1)
        bottleneck = self.conv1(self.relu1(self.norm1(concatenated)))
        new_features = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; each sees the block input and every earlier layer's output."""

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(
                num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 halving the channels, then 2x2 average pooling."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(
            num_input_features, num_output_features, kernel_size=1, stride=1, bias=False
        )
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """torchvision's ``DenseNet``, with the number of input channels as a parameter.

    Parameters
    ----------
    growth_rate, block_config, num_init_features, bn_size
        The architecture (defaults: DenseNet121).
    drop_rate
        Dropout after each dense layer during training (no effect in eval mode or in an export).
    num_classes
        Outputs of the linear ``classifier`` (logits, no activation).
    in_channels
        Channels of the input image (``features.conv0`` takes this many); 3 as in torchvision.

    Notes
    -----
    ``forward`` maps ``(N, in_channels, H, W)`` to ``(N, num_classes)``; H and W must be at least
    32 (five halvings).
    """

    def __init__(
        self,
        growth_rate: int = GROWTH_RATE,
        block_config: tuple[int, ...] = BLOCK_CONFIG,
        num_init_features: int = NUM_INIT_FEATURES,
        bn_size: int = BN_SIZE,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    (
                        "conv0",
                        nn.Conv2d(
                            in_channels,
                            num_init_features,
                            kernel_size=7,
                            stride=2,
                            padding=3,
                            bias=False,
                        ),
                    ),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(
                    f"transition{i + 1}", _Transition(num_features, num_features // 2)
                )
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

        # torchvision's initialisation, so that a seeded random-init model is a fair stand-in.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        out = self.classifier(out)
        return out


def _torchvision_densenet121(
    num_classes: int, in_channels: int, drop_rate: float
) -> nn.Module | None:
    """torchvision's DenseNet121 when torchvision imports, else ``None``."""
    try:
        from torchvision.models import densenet121 as tv_densenet121
    except Exception as exc:  # noqa: BLE001 - a mismatched build raises RuntimeError, not ImportError
        logger.debug("torchvision not usable (%s); using informer_audit.densenet", exc)
        return None
    model = tv_densenet121(weights=None, num_classes=num_classes, drop_rate=drop_rate)
    if in_channels != 3:
        conv0 = nn.Conv2d(
            in_channels, NUM_INIT_FEATURES, kernel_size=7, stride=2, padding=3, bias=False
        )
        nn.init.kaiming_normal_(conv0.weight)
        model.features.conv0 = conv0
    return model


def densenet121(
    num_classes: int,
    in_channels: int = 3,
    *,
    drop_rate: float = 0.0,
    use_torchvision: bool = True,
) -> nn.Module:
    """DenseNet121 with a ``num_classes`` linear head, randomly initialised.

    Parameters
    ----------
    num_classes
        Number of outputs (one logit per class).
    in_channels
        Input channels (1 or 3; torchvision's is 3).
    drop_rate
        Dropout in the dense layers during training.
    use_torchvision
        Use torchvision's class when torchvision imports (the state_dict keys are the same
        either way).

    Returns
    -------
    torch.nn.Module
        Maps ``(N, in_channels, H, W)`` to logits ``(N, num_classes)``; ``H, W >= 32``.
    """
    if use_torchvision:
        model = _torchvision_densenet121(num_classes, in_channels, drop_rate)
        if model is not None:
            return model
    return DenseNet(num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)


def implementation_name(model: nn.Module) -> str:
    """Where a model's class comes from, e.g. ``torchvision.models.densenet.DenseNet``."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"
