"""The network of section 3 and figure 2, and the initialisation of section 5.

    layer  kernels (paper)                      output for a 224x224x3 input
    conv1  96 x 11x11x3, stride 4, ReLU, LRN, max-pool 3/2   55x55x96 -> 27x27x96
    conv2  256 x 5x5x48 (2 towers), pad 2, ReLU, LRN, pool   27x27x256 -> 13x13x256
    conv3  384 x 3x3x256 (crosses towers), pad 1, ReLU       13x13x384
    conv4  384 x 3x3x192 (2 towers), pad 1, ReLU             13x13x384
    conv5  256 x 3x3x192 (2 towers), pad 1, ReLU, pool       13x13x256 -> 6x6x256
    fc6    4096, ReLU, dropout 0.5
    fc7    4096, ReLU, dropout 0.5
    fc8    num_classes (softmax in the loss)

60,965,224 parameters at 1000 classes.

The paper's other networks are arguments of the same class: the one-GPU baseline of section 3.2
(``towers=1, conv_channels=(48, 128, 192, 192, 256)``: half the kernels of conv1-conv4, conv5 and
the FC layers kept whole, as the paper's footnote 2 and layers-145-half.cfg say; 59,798,312
parameters at 1000 classes) and the network of section 6 with a sixth convolutional layer over the
last pooling layer (``conv6_channels=256``: 3x3, pad 1, crossing the towers, ReLU, no pooling, as
layers-146-2011.cfg; 61,555,304 parameters). The released code's extra within-map normalisation
after conv2's LRN is ``cnorm2=True``.

Choices where the paper is silent or inconsistent, listed here once:

* 224 does not divide: (224 - 11) / 4 + 1 is not whole. Like the original code, conv1 pads
  the right and bottom edges with zeros up to the next whole stride (3 pixels for 224), so a
  224 crop gives 55x55x96. A 227 crop (Caffe's choice) needs no padding and gives the same.
* The two towers are grouped convolutions (``groups=towers``) in conv2, conv4 and conv5. Each
  GPU of the paper normalised its own maps, so LRN works per tower as well.
* Dropout acts on the outputs of fc6 and fc7. ``dropout_style="paper"`` (the default) is section
  4.2's: while training each output is kept or zeroed, unscaled; at test time every output is
  multiplied by 1 - p (0.5). ``"inverted"`` scales the kept outputs by 1 / (1 - p) while training
  and leaves them alone at test time. The two give the same expected activations, but they do
  not train alike: inverted dropout is the paper's network with fc7's and fc8's weights
  initialised twice as large and updated with 4x the learning rate and a quarter of the weight
  decay. Networks of checkpoints written before the choice existed were inverted, and
  :func:`alexnet.trained.build_network` rebuilds them so.

Switches for ablations and for small images are keyword arguments; the defaults are the paper.
The module is pure: no I/O, no device or precision choices.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from alexnet.lrn import CONVENTION_K, CONVENTIONS, LocalResponseNorm, SpatialResponseNorm

PAPER_CONV_CHANNELS = (96, 256, 384, 384, 256)
PAPER_FC_UNITS = 4096
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
STEMS = {
    # name: (kernel, stride, padding); padding None = pad right/bottom up to a whole stride
    "paper": (11, 4, None),
    # 28-64 px images: a 3x3 stride-1 conv1 keeps every later layer and pool of the paper.
    "small": (3, 1, 1),
}
INIT_SCHEMES = ("paper", "original", "he")
DROPOUT_STYLES = ("paper", "inverted")


class PaperDropout(nn.Module):
    """Section 4.2's dropout: zero each output with probability p while training, unscaled;
    multiply every output by 1 - p at test time ("we use all the neurons but multiply their
    outputs by 0.5")."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        if self.training:
            keep = torch.empty_like(x).bernoulli_(1.0 - self.p)
            return x * keep
        return x * (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def at_test_time(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a dropout ``layer`` does to ``x`` at test time, whatever its mode: x (1 - p) for the
    paper's dropout, x for inverted dropout."""
    return x * (1.0 - layer.p) if isinstance(layer, PaperDropout) and layer.p else x


def dropout_layer(p: float, style: str) -> nn.Module:
    """Dropout of probability ``p`` in ``style`` (``"paper"`` or ``"inverted"``)."""
    if style not in DROPOUT_STYLES:
        raise ValueError(f"dropout style must be one of {DROPOUT_STYLES}, got {style!r}")
    return PaperDropout(p) if style == "paper" else nn.Dropout(p)


class StridePad(nn.Module):
    """Zero-pads right and bottom so that a (kernel, stride) convolution covers the image whole."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def extra_pixels(self, size: int) -> int:
        return (-(size - self.kernel)) % self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return nn.functional.pad(x, (0, self.extra_pixels(w), 0, self.extra_pixels(h)))


def check_counts(minimum: int = 1, **counts) -> dict[str, int]:
    """Class, channel and unit counts must be whole numbers of at least ``minimum`` (``AlexNet(0)``
    would build); returns them as ints."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return {name: int(value) for name, value in counts.items()}


def check_flags(**flags) -> None:
    """Switches must be booleans (``lrn="no"`` would turn LRN on)."""
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_towers(channels: Sequence[int], towers: int, name: str = "conv_channels") -> None:
    """The towers split each layer's kernels evenly: every count a multiple of ``towers``."""
    if any(c % towers for c in channels):
        raise ValueError(f"{name} {','.join(map(str, channels))} must each divide into {towers} towers")


def _divisible(channels: float, towers: int) -> int:
    return max(towers, int(round(channels / towers)) * towers)


def conv_widths(conv_channels: Sequence[int] | None, width: float, towers: int) -> tuple[int, ...]:
    """Kernels of conv1..conv5: ``conv_channels`` as given, or (None, empty) the paper's times
    ``width``, each rounded to a multiple of ``towers``."""
    if conv_channels is not None and (isinstance(conv_channels, (str, bytes)) or not isinstance(conv_channels, Iterable)):
        raise ValueError(f"conv_channels must be five positive whole numbers (conv1..conv5), got {conv_channels!r}")
    conv_channels = tuple(conv_channels) if conv_channels is not None else ()
    if not conv_channels:
        return tuple(_divisible(c * width, towers) for c in PAPER_CONV_CHANNELS)
    if len(conv_channels) != 5 or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 1
                                          for c in conv_channels):
        raise ValueError(f"conv_channels must be five positive whole numbers (conv1..conv5), got {conv_channels}")
    conv_channels = tuple(int(c) for c in conv_channels)
    check_towers(conv_channels, towers)
    return conv_channels


class AlexNet(nn.Module):
    """AlexNet; the defaults build the paper's two-tower network for 224x224x3 inputs.

    Args:
        num_classes: outputs of fc8.
        towers: 2 (the paper's two GPUs, as grouped convolutions) or 1 (a single column).
        lrn: local response normalisation after conv1 and conv2.
        lrn_convention: ``"paper"`` (alpha as written, k=2), ``"cuda-convnet"`` (alpha / n, k=2:
            the released code) or ``"caffe"`` (alpha / n, k=1: bvlc_alexnet); see :mod:`alexnet.lrn`.
        lrn_before_relu: conv1's LRN before its ReLU, as the original code did.
        cnorm2: the released code's within-map 5x5 normalisation after conv2's LRN
            (:class:`~alexnet.lrn.SpatialResponseNorm`; not in the paper).
        overlapping_pool: max-pool 3/2 (paper) or 2/2 (the non-overlapping ablation).
        activation: ``"relu"`` or ``"tanh"`` after every learnable layer but fc8.
        dropout: dropout probability on the outputs of fc6 and fc7 (0 turns it off).
        dropout_style: ``"paper"`` (unscaled while training, outputs x (1 - p) at test time) or
            ``"inverted"`` (kept outputs x 1 / (1 - p) while training, unchanged at test time).
        in_channels: 3 for RGB, 1 for grayscale data sets.
        input_size: the side of the square crops fed to the network (sets fc6's fan-in).
        width: multiplier on every layer's kernel and unit count (1.0 is the paper).
        stem: ``"paper"`` (11x11 stride 4) or ``"small"`` (3x3 stride 1, for 28-64 px images).
        conv_channels: kernels of conv1..conv5, replacing ``width`` for them (each a multiple of
            ``towers``); empty: the paper's times ``width``.
        fc_units: units of fc6 and fc7, replacing ``width`` for them; 0: 4096 times ``width``.
        conv6_channels: kernels of a sixth convolutional layer over conv5's pooled maps
            (section 6; 256 in the released config); 0: none.

    Arguments of the wrong type or out of range raise a ValueError naming them. :meth:`forward`
    and :meth:`fc7_features` take float (N, C, H, W) batches of ``in_channels`` maps whose side
    pools to fc6's (``input_size``, or e.g. 227 for 224); anything else is refused in one line
    (:meth:`check_input`). The network compiles with ``torch.compile`` and ``torch.jit.script``
    (there LRN is the plain formula).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        towers: int = 2,
        lrn: bool = True,
        lrn_convention: str = "paper",
        lrn_before_relu: bool = False,
        overlapping_pool: bool = True,
        activation: str = "relu",
        dropout: float = 0.5,
        dropout_style: str = "paper",
        in_channels: int = 3,
        input_size: int = 224,
        width: float = 1.0,
        stem: str = "paper",
        conv_channels: Sequence[int] | None = None,
        fc_units: int = 0,
        conv6_channels: int = 0,
        cnorm2: bool = False,
    ) -> None:
        super().__init__()
        counts = check_counts(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        if isinstance(towers, bool) or not isinstance(towers, numbers.Integral) or towers not in (1, 2):
            raise ValueError(f"towers must be 1 or 2, got {towers!r}")
        check_flags(lrn=lrn, lrn_before_relu=lrn_before_relu, overlapping_pool=overlapping_pool, cnorm2=cnorm2)
        check_choice("activation", activation, sorted(ACTIVATIONS))
        check_choice("stem", stem, sorted(STEMS))
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if isinstance(width, bool) or not isinstance(width, numbers.Real) or not 0 < width < math.inf:
            raise ValueError(f"width must be a finite number > 0, got {width!r}")
        check_choice("dropout_style", dropout_style, DROPOUT_STYLES)
        check_choice("lrn_convention", lrn_convention, CONVENTIONS)
        self.towers, self.num_classes, self.input_size = int(towers), counts["num_classes"], counts["input_size"]
        self.in_channels = counts["in_channels"]
        self.channels = conv_widths(conv_channels, width, self.towers)
        units = check_counts(0, fc_units=fc_units, conv6_channels=conv6_channels)
        self.fc_units = units["fc_units"] or max(1, int(round(PAPER_FC_UNITS * width)))
        self.dropout_style = dropout_style
        act = ACTIVATIONS[activation]
        norm = (functools.partial(LocalResponseNorm, 5, 1e-4, 0.75, CONVENTION_K[lrn_convention],
                                  convention=lrn_convention, groups=self.towers) if lrn else nn.Identity)
        self.features = _features(self.in_channels, self.channels, units["conv6_channels"], self.towers, STEMS[stem],
                                  act, norm, 3 if overlapping_pool else 2, lrn_before_relu, cnorm2)
        side = feature_map_size(self.input_size, stem, overlapping_pool)
        self.stem, self.overlapping_pool, self.feature_side = stem, overlapping_pool, side
        if side < 1:
            raise ValueError(
                f"input_size {self.input_size} is too small for stem {stem!r}: "
                "use stem='small' for images under 64 px, or larger crops"
            )
        fc = self.fc_units
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("fc6", nn.Linear((units["conv6_channels"] or self.channels[4]) * side * side, fc)),
                    ("act6", act()),
                    ("drop6", dropout_layer(dropout, dropout_style)),
                    ("fc7", nn.Linear(fc, fc)),
                    ("act7", act()),
                    ("drop7", dropout_layer(dropout, dropout_style)),
                    ("fc8", nn.Linear(fc, self.num_classes)),
                ]
            )
        )
        init_weights_(self, "paper")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        return self.classifier(self.features(x))

    def fc7_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d activations of fc7 (after its nonlinearity, before its dropout), as figure 4
        uses: fc6's outputs pass drop6 as at test time (times 1 - p with the paper's dropout), in
        any mode, so these are the activations of the network that :meth:`forward` computes in eval()."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        return fc7_activations(self.classifier, self.features(x))

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """A TypeError or ValueError in one line unless ``x`` is a float (N, C, H, W) batch that this
        network takes: ``in_channels`` maps, and crops whose conv5 maps have the side fc6 was built
        for (``input_size``, or another size that pools to the same side, such as 227 for 224)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"AlexNet takes a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"AlexNet takes floating-point images (N, C, H, W), got {x.dtype}; "
                            "convert them (x.float()) and centre them as the network was trained")
        if x.dim() != 4:
            raise ValueError(f"AlexNet takes a batch of shape (N, C, H, W), got shape {tuple(x.shape)}"
                             + ("; for one image pass x[None]" if x.dim() == 3 else ""))
        weight = next(self.parameters())
        if x.device != weight.device:
            raise ValueError(f"this AlexNet's weights are on {weight.device} and the images on {x.device}: move the "
                             f"images (x.to('{weight.device}')) or the network (model.to('{x.device}'))")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"this AlexNet's weights are {weight.dtype} and the images {x.dtype}: convert the "
                            f"images (x.to({weight.dtype})) or run the network under torch.autocast")
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"this AlexNet takes {self.in_channels}-channel images, got {c} channels "
                             f"(shape {tuple(x.shape)})")
        sides = [feature_map_size(s, self.stem, self.overlapping_pool) for s in (h, w)]
        if sides != [self.feature_side, self.feature_side]:
            raise ValueError(f"this AlexNet was built for {self.input_size}x{self.input_size} crops "
                             f"(input_size={self.input_size}), got {h}x{w}: crop the images to that size or "
                             f"build the network with input_size={h}")

    def learnable_layers(self) -> "OrderedDict[str, nn.Module]":
        """conv1..conv5, fc6..fc8 by name."""
        return learnable_layers(self.features, self.classifier)


def _features(in_channels: int, channels: Sequence[int], conv6_channels: int, towers: int, stem: tuple,
              act, norm, pool_kernel: int, lrn_before_relu: bool, cnorm2: bool) -> nn.Sequential:
    """conv1..conv5 (and conv6) with their nonlinearities, normalisations and pools, as figure 2."""
    c1, c2, c3, c4, c5 = channels
    k1, s1, p1 = stem

    def pool() -> nn.Module:
        return nn.MaxPool2d(kernel_size=pool_kernel, stride=2)

    pad = [("pad1", StridePad(k1, s1))] if p1 is None else []
    block1 = [("lrn1", norm()), ("act1", act())] if lrn_before_relu else [("act1", act()), ("lrn1", norm())]
    return nn.Sequential(
        OrderedDict(
            pad
            + [("conv1", nn.Conv2d(in_channels, c1, k1, stride=s1, padding=p1 or 0))]
            + block1
            + [
                ("pool1", pool()),
                ("conv2", nn.Conv2d(c1, c2, 5, padding=2, groups=towers)),
                ("act2", act()),
                ("lrn2", norm()),
            ]
            + ([("cnorm2", SpatialResponseNorm(5, 1e-3, 0.75, 1.0))] if cnorm2 else [])
            + [
                ("pool2", pool()),
                ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),
                ("act3", act()),
                ("conv4", nn.Conv2d(c3, c4, 3, padding=1, groups=towers)),
                ("act4", act()),
                ("conv5", nn.Conv2d(c4, c5, 3, padding=1, groups=towers)),
                ("act5", act()),
                ("pool5", pool()),
            ]
            # section 6: "an extra sixth convolutional layer over the last pooling layer"
            + ([("conv6", nn.Conv2d(c5, conv6_channels, 3, padding=1)), ("act_conv6", act())] if conv6_channels else [])
        )
    )


def fc7_activations(classifier: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """``h`` through ``classifier`` up to fc7's nonlinearity, each dropout as at test time."""
    for name, layer in classifier.named_children():
        if name.startswith("drop"):
            h = at_test_time(layer, h)
            continue
        h = layer(h)
        if name == "act7":
            return h
    raise AssertionError("classifier has no act7")


def learnable_layers(*parts: nn.Module) -> "OrderedDict[str, nn.Module]":
    """The convolutions and linear layers of ``parts``, by name, in order."""
    return OrderedDict((name, m) for part in parts for name, m in part.named_children()
                       if isinstance(m, (nn.Conv2d, nn.Linear)))


def feature_map_size(input_size: int, stem: str = "paper", overlapping_pool: bool = True) -> int:
    """Side of conv5's pooled output for a square input (6 for the paper's 224)."""
    k, s, p = STEMS[stem]
    if p is None:
        side = -(-(input_size - k) // s) + 1  # padded up to a whole stride
    else:
        side = (input_size + 2 * p - k) // s + 1
    z = 3 if overlapping_pool else 2
    for _ in range(3):  # pool1, pool2, pool5; conv2-5 keep the size
        side = (side - z) // 2 + 1
    return side


# Section 5: "We initialized the weights in each layer from a zero-mean Gaussian distribution
# with standard deviation 0.01. We initialized the neuron biases in the second, fourth, and
# fifth convolutional layers, as well as in the fully-connected hidden layers, with the
# constant 1. ... the remaining layers with the constant 0." fc8 is not a hidden layer: its bias
# is 0, as in the released layers-145.cfg (no initB in fc1000). A bias of 1 there, the usual
# reading, shifts every logit equally (the softmax and the gradients stay as they are) but not
# the checkpoint; the recipe's ``fc8_bias_zero`` off sets it.
# conv6 (section 6, not in section 5's list) follows its released config: bias 1, like conv4 and conv5.
PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "conv6", "fc6", "fc7")
ORIGINAL_STD_003 = ("conv3", "conv4", "conv5", "conv6")


def init_weights_(model: nn.Module, scheme: str = "paper") -> nn.Module:
    """Initialise in place a network with this package's layer names (:class:`AlexNet`, or
    :class:`~alexnet.torchvision_alexnet.TorchvisionAlexNet`, whose layers are named the same).

    * ``"paper"``: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, 0 in conv1,
      conv3, fc8.
    * ``"original"``: as ``"paper"`` but std 0.03 in conv3-conv5 (and conv6) (the released configs).
    * ``"he"``: weights N(0, 2/fan_in) (fan-in scaled) and biases 0.1 in conv1-fc7; fc8 weights
      N(0, 0.01) and bias 0, so the loss starts at ln(classes). Not the paper's; it avoids the
      long stall at loss ln(classes) on small data sets.
    """
    if not isinstance(scheme, str) or scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme must be one of {INIT_SCHEMES}, got {scheme!r}")
    if not callable(getattr(model, "learnable_layers", None)):
        raise TypeError(f"init_weights_ takes an AlexNet (a network whose layers are named conv1..fc8), "
                        f"got {type(model).__name__}")
    with torch.no_grad():
        for name, layer in model.learnable_layers().items():
            if scheme == "he":
                if name == "fc8":  # small logits: the loss starts at ln(classes), as with the paper's init
                    layer.weight.normal_(0.0, 0.01)
                    layer.bias.zero_()
                else:
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    layer.bias.fill_(0.1)
                continue
            std = 0.03 if scheme == "original" and name in ORIGINAL_STD_003 else 0.01
            layer.weight.normal_(0.0, std)
            layer.bias.fill_(1.0 if name in PAPER_BIAS_ONE else 0.0)
    return model


def count_parameters(model: nn.Module, names: Sequence[str] | None = None) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if names is None or n in names)
