"""Section 3.2: the two towers on two processes, as the paper trained them on two GPUs.

"We employ essentially the same parallelization scheme ... puts half of the kernels (or
neurons) on each GPU, with one additional trick: the GPUs communicate only in certain layers.
This means that, for example, the kernels of layer 3 take input from all kernel maps in layer 2.
However, kernels in layer 4 take input only from those kernel maps in layer 3 which reside on
the same GPU."

Each rank of a tower group holds, for every layer, the kernels (or units) of its own tower:

    conv1  its 48 of 96 kernels over the 3 input channels, ReLU, LRN over its own maps, pool
    conv2  its 128 of 256 over its own 48 maps, ReLU, LRN over its own maps, pool
    conv3  its 192 of 384 over all 256 maps of conv2          <- both towers' maps exchanged
    conv4  its 192 of 384 over its own 192 maps
    conv5  its 128 of 256 over its own 192 maps, pool
    conv6  (section 6, when built) its half over all pooled conv5 maps <- exchanged, as for conv3
    fc6    its 2048 of 4096 over the 9216 pooled conv5 outputs <- exchanged
    fc7    its 2048 of 4096 over all 4096 fc6 outputs        <- exchanged
    fc8    its 500 of 1000 logits over all 4096 fc7 outputs  <- exchanged
    logits the two halves are exchanged, so every tower returns all logits

The numbers scale with ``width``. Choices, listed once:

* fc8 is split like the other layers ("half of the kernels (or neurons) on each GPU"), so no
  weights are replicated and nothing has to be kept in sync. Its two halves of the logits
  are then gathered: every tower computes the same loss from the same full logits.
* Every tower draws its own dropout masks, for its own units of fc6 and fc7, before the
  exchange; each unit is dropped by exactly one mask, as on one device. Seed the ranks
  differently after building the model, or the two towers draw the same pattern.
* Unit and class counts that do not halve (an odd ``num_classes``) split like
  ``torch.tensor_split``: tower 0 takes the extra one.

Parameters are the tower's slices of the single-device model's, in its order and under its
names, so checkpoints move between the two (``tower_state_dict_from_grouped``,
``grouped_state_dict_from_towers``, :meth:`TowerParallelAlexNet.grouped_state_dict`). In the
grouped model tower t owns output channels (units) [t*C/2, (t+1)*C/2) of every layer, and the
inputs of conv3, conv6 and fc6 are [tower 0's maps, tower 1's maps] (for fc6, the channel-major
flattening of the last convolution's (C, 6, 6), conv5's or conv6's). Every parameter of tower t
is therefore the slice t of dim 0.

The exchange is :func:`all_gather_towers`, an autograd function. Its backward gives rank r the
sum, over the ranks, of the gradient each of them computed for rank r's slice (a
reduce-scatter): each tower's own downstream layers contribute their part. After the last
exchange (the logits) the downstream computation, the loss, is the same on every tower, so
there the gradient is only sliced, not summed. ``torch.distributed.nn.functional.all_gather``
computes the summed backward correctly (through all-to-all on gloo) but handles neither
uneven splits nor a replicated downstream, hence this module's own function.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import skip_init

from alexnet.errors import UserError
from alexnet.lrn import LocalResponseNorm
from alexnet.model import AlexNet, at_test_time, init_weights_

# Layers whose input is gathered from both towers (section 3.2; conv6 of section 6 crosses like conv3).
CROSSINGS = ("conv3", "conv6", "fc6", "fc7", "fc8")
# Backends with a native reduce-scatter; others sum the whole gradient with one all-reduce.
REDUCE_SCATTER_BACKENDS = ("nccl",)


def split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of the ``parts`` slices of ``n`` (as ``torch.tensor_split``: the first take the extra)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _pad_to(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``x`` made contiguous, zero-padded along ``dim`` to ``size`` (collectives need equal shapes)."""
    if x.shape[dim] == size:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = size
    out = x.new_zeros(shape)
    out.narrow(dim, 0, x.shape[dim]).copy_(x)
    return out


def _all_gather_along(x: torch.Tensor, dim: int, sizes: Sequence[int], group: dist.ProcessGroup) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order; rank r contributes ``sizes[r]``."""
    rank = dist.get_rank(group)
    if x.shape[dim] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {x.shape[dim]} along dim {dim}, expected {sizes[rank]}")
    local = _pad_to(x, dim, max(sizes))
    buffers = [torch.empty_like(local) for _ in sizes]
    dist.all_gather(buffers, local, group=group)
    return torch.cat([b.narrow(dim, 0, s) for b, s in zip(buffers, sizes)], dim)


def _sum_slices(
    grad: torch.Tensor,
    dim: int,
    sizes: Sequence[int],
    group: dist.ProcessGroup,
    reduce_scatter: bool | None = None,
) -> torch.Tensor:
    """Rank r's slice of the sum over ranks of ``grad``: the backward of :func:`_all_gather_along`.

    ``reduce_scatter`` None chooses by backend: a native reduce-scatter moves half the data of
    an all-reduce, but gloo emulates it with one all-reduce per rank.
    """
    rank = dist.get_rank(group)
    if reduce_scatter is None:
        reduce_scatter = dist.get_backend(group) in REDUCE_SCATTER_BACKENDS
    if reduce_scatter:
        parts = [_pad_to(p, dim, max(sizes)) for p in grad.split(list(sizes), dim)]
        out = torch.empty_like(parts[rank])
        dist.reduce_scatter(out, parts, group=group)
        return out.narrow(dim, 0, sizes[rank])
    total = grad.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(total, group=group)
    return total.narrow(dim, sum(sizes[:rank]), sizes[rank])


class _GatherTowers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, sizes, group, replicated_downstream):
        ctx.dim, ctx.sizes, ctx.group, ctx.replicated = dim, sizes, group, replicated_downstream
        return _all_gather_along(x, dim, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.replicated:  # every rank holds the same gradient: its own slice is the answer
            rank = dist.get_rank(ctx.group)
            g = grad.narrow(ctx.dim, sum(ctx.sizes[:rank]), ctx.sizes[rank])
        else:
            g = _sum_slices(grad, ctx.dim, ctx.sizes, ctx.group)
        return g, None, None, None, None


def all_gather_towers(
    x: torch.Tensor,
    group: dist.ProcessGroup,
    *,
    dim: int = 1,
    sizes: Sequence[int] | None = None,
    replicated_downstream: bool = False,
) -> torch.Tensor:
    """Concatenate the towers' ``x`` along ``dim`` (channels or features), differentiably.

    Args:
        sizes: how much each rank holds along ``dim``; None means all as much as this one.
        replicated_downstream: True when every rank computes the same function of the result
            (the loss from the full logits): the backward then slices the gradient instead of
            summing it over ranks, which would count the one loss once per tower.
    """
    dim = dim % x.dim()
    if sizes is None:
        sizes = [x.shape[dim]] * dist.get_world_size(group)
    return _GatherTowers.apply(x, dim, tuple(sizes), group, replicated_downstream)


def _check_grouped(grouped_state_dict: Mapping[str, torch.Tensor], num_towers: int) -> None:
    try:
        conv1 = grouped_state_dict["features.conv1.weight"]
        conv2 = grouped_state_dict["features.conv2.weight"]
    except KeyError as missing:
        raise UserError(f"not an AlexNet state dict (no {missing}): pass the model's state_dict()") from None
    if conv2.shape[1] * num_towers != conv1.shape[0]:
        raise UserError(
            f"this checkpoint's conv2 sees {conv2.shape[1]} of conv1's {conv1.shape[0]} maps, not 1/{num_towers}, "
            f"so it is not a {num_towers}-tower model (towers=1?): "
            f"tower parallelism needs a towers={num_towers} checkpoint"
        )


def tower_state_dict_from_grouped(
    grouped_state_dict: Mapping[str, torch.Tensor], tower: int, num_towers: int = 2
) -> "OrderedDict[str, torch.Tensor]":
    """Tower ``tower``'s parameters from a single-device (grouped, ``towers=2``) AlexNet state dict.

    Also maps any tensors keyed and shaped like the parameters (optimiser velocities).
    The slices are copies: saving one does not save the whole grouped tensor behind it.
    """
    if not 0 <= tower < num_towers:
        raise ValueError(f"tower must be in [0, {num_towers}), got {tower}")
    _check_grouped(grouped_state_dict, num_towers)
    return OrderedDict(
        (name, t.tensor_split(num_towers, dim=0)[tower].clone()) for name, t in grouped_state_dict.items()
    )


def grouped_state_dict_from_towers(
    tower_state_dicts: Sequence[Mapping[str, torch.Tensor]],
) -> "OrderedDict[str, torch.Tensor]":
    """The single-device AlexNet state dict from every tower's, given in tower order."""
    names = list(tower_state_dicts[0])
    for t, sd in enumerate(tower_state_dicts):
        if list(sd) != names:
            raise ValueError(f"tower {t}'s state dict has other keys than tower 0's")
    return OrderedDict((name, torch.cat([sd[name] for sd in tower_state_dicts], 0)) for name in names)


def _tower_layer(layer: nn.Module, tower: int, num_towers: int) -> nn.Module:
    """``layer``'s counterpart holding tower ``tower``'s kernels or units.

    The weights are left uninitialised (they are loaded next) so that building a tower draws no
    random numbers: the towers' unequal shares would otherwise leave the ranks' generators apart.
    """
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        out_size = split_sizes(layer.weight.shape[0], num_towers)[tower]
        like = dict(device=layer.weight.device, dtype=layer.weight.dtype)
    if isinstance(layer, nn.Conv2d):
        # weight is (out, in / groups, k, k): a grouped layer's kernels already see one tower's maps
        in_maps, kernel, stride, padding = layer.weight.shape[1], layer.kernel_size, layer.stride, layer.padding
        return skip_init(nn.Conv2d, in_maps, out_size, kernel, stride=stride, padding=padding, **like)
    if isinstance(layer, nn.Linear):
        return skip_init(nn.Linear, layer.in_features, out_size, **like)
    if isinstance(layer, LocalResponseNorm):
        return LocalResponseNorm(
            layer.size, layer.alpha, layer.beta, layer.k, convention=layer.convention, groups=layer.groups // num_towers
        )
    return copy.deepcopy(layer)  # padding, activations, pooling, dropout, flatten: no parameters


class TowerParallelAlexNet(nn.Module):
    """One tower of AlexNet on this rank; the ranks of ``tower_group`` together compute the network.

    Takes AlexNet's keyword arguments (``towers`` must stay 2) plus ``init`` (the scheme of
    :func:`alexnet.model.init_weights_`). The weights are those of the single-device model that
    the same arguments build from the same random state: seed every rank alike before building.

    Every rank of the tower group must call forward with the same batch and compute the same
    loss from the returned logits (all of them, on every rank).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        tower_group: dist.ProcessGroup,
        tower: int,
        init: str = "paper",
        **model_kwargs,
    ) -> None:
        if model_kwargs.get("towers", 2) != 2:
            raise ValueError(f"tower parallelism splits the paper's two towers; got towers={model_kwargs['towers']}")
        grouped = AlexNet(num_classes, **model_kwargs)
        if init != "paper":  # AlexNet's constructor applies the paper's init already
            init_weights_(grouped, init)
        super().__init__()
        self._build(grouped, tower_group, tower)

    @classmethod
    def from_grouped(cls, model: AlexNet, tower_group: dist.ProcessGroup, tower: int) -> "TowerParallelAlexNet":
        """Tower ``tower`` of a single-device two-tower ``model`` (same weights, same options)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._build(model, tower_group, tower)
        return self

    def _build(self, grouped: AlexNet, tower_group: dist.ProcessGroup, tower: int) -> None:
        if grouped.towers != 2:
            raise ValueError(f"tower parallelism needs a two-tower model, got towers={grouped.towers}")
        num_towers = dist.get_world_size(tower_group)
        if num_towers != grouped.towers:
            raise ValueError(f"the tower group has {num_towers} ranks; the model has {grouped.towers} towers")
        if dist.get_rank(tower_group) != tower:
            raise ValueError(
                f"tower {tower} on rank {dist.get_rank(tower_group)} of its tower group: "
                "tower t must be rank t of the group (make_process_groups orders them so)"
            )
        self.tower_group, self.tower, self.num_towers = tower_group, tower, num_towers
        self.num_classes, self.input_size = grouped.num_classes, grouped.input_size

        for part_name in ("features", "classifier"):
            part = getattr(grouped, part_name)
            layers = OrderedDict((n, _tower_layer(m, tower, num_towers)) for n, m in part.named_children())
            setattr(self, part_name, nn.Sequential(layers))

        # What each rank holds of the input of every crossing layer, and of the logits.
        units = {name: split_sizes(m.weight.shape[0], num_towers) for name, m in grouped.learnable_layers().items()}
        last_conv = "conv6" if "conv6" in units else "conv5"
        fc6_inputs_per_map = grouped.classifier.fc6.in_features // getattr(grouped.features, last_conv).out_channels
        self.exchange_sizes = {
            "conv3": units["conv2"],
            **({"conv6": units["conv5"]} if last_conv == "conv6" else {}),
            "fc6": [c * fc6_inputs_per_map for c in units[last_conv]],  # flattened (C/2, 6, 6) per tower
            "fc7": units["fc6"],
            "fc8": units["fc7"],
            "logits": units["fc8"],
        }
        grouped_state = grouped.state_dict()
        self._dim0_sizes = {name: split_sizes(t.shape[0], num_towers) for name, t in grouped_state.items()}
        self.load_state_dict(tower_state_dict_from_grouped(grouped_state, tower, num_towers))

    def _layers(self) -> Iterator[tuple[str, nn.Module]]:
        yield from self.features.named_children()
        yield from self.classifier.named_children()

    def _gather(self, x: torch.Tensor, name: str, replicated_downstream: bool = False) -> torch.Tensor:
        return all_gather_towers(
            x, self.tower_group, sizes=self.exchange_sizes[name], replicated_downstream=replicated_downstream
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, layer in self._layers():
            if name in CROSSINGS:
                x = self._gather(x, name)
            x = layer(x)
        return self._gather(x, "logits", replicated_downstream=True)

    def fc7_features(self, x: torch.Tensor) -> torch.Tensor:
        """All 4096 fc7 activations (after the nonlinearity; dropout as at test time), on every tower."""
        for name, layer in self._layers():
            if name.startswith("drop"):
                x = at_test_time(layer, x)
                continue
            if name in CROSSINGS:
                x = self._gather(x, name)
            x = layer(x)
            if name == "act7":
                return self._gather(x, "fc8", replicated_downstream=True)
        raise AssertionError("classifier has no act7")

    def learnable_layers(self) -> "OrderedDict[str, nn.Module]":
        """This tower's conv1..conv5 (conv6), fc6..fc8 by name."""
        return OrderedDict((n, m) for n, m in self._layers() if isinstance(m, (nn.Conv2d, nn.Linear)))

    def gather_grouped(self, tensors: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """Tensors keyed and shaped like this tower's parameters (the state dict, gradients,
        velocities), joined into the single-device model's layout on every rank of the tower group.

        Collective: every rank of the tower group calls it with the same keys.
        """
        return OrderedDict(
            (name, _all_gather_along(t.detach(), 0, self._dim0_sizes[name], self.tower_group))
            for name, t in tensors.items()
        )

    def grouped_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """The single-device AlexNet state dict, on every rank of the tower group (collective)."""
        return self.gather_grouped(self.state_dict())

    def load_grouped_state_dict(self, grouped_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load this tower's part of a single-device (``towers=2``) AlexNet state dict."""
        self.load_state_dict(tower_state_dict_from_grouped(grouped_state_dict, self.tower, self.num_towers))
