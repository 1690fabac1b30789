"""torchvision's AlexNet: the single-tower "one weird trick" layout, and its weights in and out.

torchvision's ``alexnet`` follows Krizhevsky's later paper (*One weird trick for parallelizing
convolutional neural networks*, 2014), not the 2012 network of :mod:`alexnet.model`:

    layer  kernels                                    differs from the 2012 paper
    conv1  64 x 11x11x3, stride 4, padding 2, ReLU, max-pool 3/2   64 not 96 kernels, no LRN
    conv2  192 x 5x5, padding 2, ReLU, max-pool 3/2                192 not 256, one tower, no LRN
    conv3  384 x 3x3, padding 1, ReLU
    conv4  256 x 3x3, padding 1, ReLU                              256 not 384
    conv5  256 x 3x3, padding 1, ReLU, max-pool 3/2
    adaptive average pool to 6x6                                   (any input of 63 px or more)
    dropout, fc6 4096, ReLU, dropout, fc7 4096, ReLU, fc8          dropout on the *inputs* of fc6, fc7

61,100,840 parameters at 1000 classes.

The layers keep this project's names (``features.conv1``, ``classifier.fc8``, ...) so that the
rest of the package (figures, fc7 features, fine-tuning) treats both networks alike;
:func:`from_torchvision_state_dict` and :func:`to_torchvision_state_dict` translate the keys.

torchvision's networks take ``(x / 255 - mean) / std`` per channel (ImageNet's mean and std).
This package centres with a mean image and one scalar scale, so :func:`import_torchvision`
keeps the mean as a constant mean image (x 255), the scale 1/255, and folds the per-channel
``1 / std`` into conv1's weights: a convolution is linear in each input channel, so
``conv(x_c / std_c; w) = conv(x_c; w_c / std_c)``, padding zeros included.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.model import check_counts, fc7_activations, learnable_layers

# torchvision's index in features/classifier -> our name (layers without parameters omitted).
TORCHVISION_KEYS = OrderedDict(
    [
        ("features.0", "features.conv1"),
        ("features.3", "features.conv2"),
        ("features.6", "features.conv3"),
        ("features.8", "features.conv4"),
        ("features.10", "features.conv5"),
        ("classifier.1", "classifier.fc6"),
        ("classifier.4", "classifier.fc7"),
        ("classifier.6", "classifier.fc8"),
    ]
)
# The normalisation torchvision's ImageNet weights were trained with (RGB, inputs in 0-1).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# torchvision's evaluation transform: shorter side to 256, centre crop 224.
TORCHVISION_RESIZE, TORCHVISION_CROP = 256, 224
# The key under which a checkpoint records the per-channel std folded into conv1: in an imported
# network's config, and in the data of a run that fine-tuned one keeping its mean image.
FOLDED_STD = "input_std_folded_into_conv1"


class TorchvisionAlexNet(nn.Module):
    """torchvision's ``alexnet`` layout under this package's layer names.

    Args:
        num_classes: outputs of fc8.
        dropout: dropout probability on the inputs of fc6 and fc7 (torchvision: 0.5).
        in_channels: 3 for RGB (torchvision's weights), 1 for grayscale data sets.
    """

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.5, in_channels: int = 3) -> None:
        super().__init__()
        check_counts(num_classes=num_classes, in_channels=in_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes, self.towers = num_classes, 1
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 64, 11, stride=4, padding=2)),
                    ("act1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(3, 2)),
                    ("conv2", nn.Conv2d(64, 192, 5, padding=2)),
                    ("act2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(3, 2)),
                    ("conv3", nn.Conv2d(192, 384, 3, padding=1)),
                    ("act3", nn.ReLU()),
                    ("conv4", nn.Conv2d(384, 256, 3, padding=1)),
                    ("act4", nn.ReLU()),
                    ("conv5", nn.Conv2d(256, 256, 3, padding=1)),
                    ("act5", nn.ReLU()),
                    ("pool5", nn.MaxPool2d(3, 2)),
                ]
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("drop5", nn.Dropout(dropout)),
                    ("fc6", nn.Linear(256 * 6 * 6, 4096)),
                    ("act6", nn.ReLU()),
                    ("drop6", nn.Dropout(dropout)),
                    ("fc7", nn.Linear(4096, 4096)),
                    ("act7", nn.ReLU()),
                    ("fc8", nn.Linear(4096, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))

    def fc7_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d activations of fc7 after its ReLU, as at test time (no dropout)."""
        return fc7_activations(self.classifier, self.avgpool(self.features(x)))

    def learnable_layers(self) -> "OrderedDict[str, nn.Module]":
        """conv1..conv5, fc6..fc8 by name."""
        return learnable_layers(self.features, self.classifier)


def _split(key: str) -> tuple[str, str]:
    layer, _, kind = key.rpartition(".")
    return layer, kind


def from_torchvision_state_dict(state: dict) -> dict:
    """torchvision's keys (``features.0.weight``, ``classifier.6.bias``, ...) -> ours.

    Raises ``KeyError`` naming the first key that is not torchvision's AlexNet, or the first missing one.
    """
    ours = {}
    for key, tensor in state.items():
        layer, kind = _split(key)
        if layer not in TORCHVISION_KEYS or kind not in ("weight", "bias"):
            raise KeyError(f"{key!r} is not a key of torchvision's AlexNet")
        ours[f"{TORCHVISION_KEYS[layer]}.{kind}"] = tensor
    missing = [f"{name}.{kind}" for name in TORCHVISION_KEYS for kind in ("weight", "bias") if f"{name}.{kind}" not in state]
    if missing:
        raise KeyError(f"torchvision's AlexNet has {missing[0]!r} but the file does not")
    return ours


def to_torchvision_state_dict(state: dict) -> dict:
    """Our keys -> torchvision's, for a :class:`TorchvisionAlexNet` state dict."""
    back = {ours: theirs for theirs, ours in TORCHVISION_KEYS.items()}
    out = OrderedDict()
    for key, tensor in state.items():
        layer, kind = _split(key)
        if layer not in back:
            raise KeyError(f"{key!r} has no place in torchvision's AlexNet")
        out[f"{back[layer]}.{kind}"] = tensor
    return out


def fold_input_std(state: dict, std: tuple[float, ...]) -> dict:
    """A copy of ``state`` whose conv1 takes inputs *not* divided by ``std`` per channel."""
    state = dict(state)
    w = state["features.conv1.weight"]
    state["features.conv1.weight"] = w / torch.tensor(std, dtype=w.dtype).view(1, -1, 1, 1)
    return state


def folded_std(payload: dict) -> tuple[float, ...] | None:
    """The per-channel input std a checkpoint's conv1 holds folded, or None: an imported network's
    (in its config) or that of a run that fine-tuned one keeping its mean image (in its data,
    ``train --mean-image parent``)."""
    std = payload.get("config", {}).get(FOLDED_STD) or payload.get("data", {}).get(FOLDED_STD)
    if not std:
        return None
    channels = payload.get("data", {}).get("channels", len(std) if isinstance(std, (list, tuple)) else 0)
    if (not isinstance(std, (list, tuple)) or len(std) != channels
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in std)):
        raise UserError(f"{FOLDED_STD} {std!r} is not one positive number per input channel; the checkpoint is damaged")
    return tuple(float(s) for s in std)


def unfold_input_std(state: dict, std: tuple[float, ...]) -> dict:
    """Inverse of :func:`fold_input_std`: conv1 for inputs divided by ``std`` again (torchvision's)."""
    state = dict(state)
    w = state["features.conv1.weight"]
    state["features.conv1.weight"] = w * torch.tensor(std, dtype=w.dtype).view(1, -1, 1, 1)
    return state


def _is_safetensors(path) -> bool:
    """Whether ``path`` starts as a safetensors file: an 8-byte little-endian header length, then
    that many bytes of JSON."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = os.path.getsize(path)
    except OSError:
        return False
    return len(head) == 9 and head[8:] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def read_weights(path) -> dict:
    """torchvision's AlexNet weights as saved: a ``torch.save`` state dict (``alexnet-owt-*.pth``,
    read without running code by :func:`alexnet.checkpoint.read_torch_file`) or a safetensors file
    (``safetensors.torch.save_file(model.state_dict(), ...)``); a one-line UserError otherwise."""
    from alexnet.checkpoint import read_torch_file

    expect = "torchvision's AlexNet weights (a .pth state dict, or .safetensors)"
    if not _is_safetensors(path):
        return read_torch_file(path, expect=expect, legacy=True)
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        with open(path, "rb") as f:
            return load(f.read())
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); it is not {expect}") from None


def import_checkpoint_payload(torchvision_state: dict, classes: list[str], *, image_size: int = TORCHVISION_RESIZE,
                              crop_size: int = TORCHVISION_CROP) -> dict:
    """An alexnet checkpoint payload (see :mod:`alexnet.checkpoint`) for torchvision's weights.

    Test-time preprocessing then matches torchvision's evaluation transform: images are stored
    at ``image_size`` (shorter side resized, centre square), the centre ``crop_size`` patch is
    taken, ``(x - 255 mean) / 255`` per channel, and conv1 holds the folded ``1 / std``.
    """
    state = from_torchvision_state_dict(torchvision_state)
    num_classes = int(state["classifier.fc8.weight"].shape[0])
    channels = int(state["features.conv1.weight"].shape[1])
    if channels != 3:
        raise ValueError(f"conv1 takes {channels} channels; torchvision's ImageNet normalisation needs 3 (RGB)")
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for {num_classes} outputs of fc8")
    state = {k: v.detach().float().contiguous() for k, v in fold_input_std(state, IMAGENET_STD_RGB).items()}
    mean = torch.tensor(IMAGENET_MEAN_RGB, dtype=torch.float32) * 255.0
    return dict(
        model_args=dict(arch="torchvision", num_classes=num_classes),
        data=dict(classes=list(classes), image_size=image_size, channels=3,
                  mean_image=mean.view(1, 1, 3).expand(image_size, image_size, 3).contiguous()),
        config=dict(crop_size=crop_size, subtract_mean=True, input_scale=1.0 / 255.0,
                    imported_from="torchvision", **{FOLDED_STD: list(IMAGENET_STD_RGB)}),
        model=state,
    )
