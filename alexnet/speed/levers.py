"""The training step's speed levers: the same arithmetic, run faster (summed in another order).

``--step-kernels`` (``step_kernels``):

    conv1-s2d               conv1 as a 3x3 stride-1 convolution of the space-to-depth folded input,
                            which tensor cores run (conv1_s2d.py)
    fused-blocks            bias + ReLU + LRN + max-pool 3/2 of conv1 and conv2 as one Triton kernel
                            forward and two backward (fused_blocks.py)
    fused-sgd               PaperSGD in one pass over flat buffers, one Triton kernel per parameter
                            group (fused_sgd.py)
    bf16-weights            the same pass also writes the weights in bfloat16, and the forward pass
                            reads them instead of casting (bf16_weights.py)
    grouped-halves          conv2, conv4 and conv5 as one dense convolution per tower
    grouped-block-diagonal  the same as one dense convolution with a block-diagonal weight
                            (grouped.py)

``all`` names the first three (bf16-weights, for bf16 runs only, goes by its name). ``--cuda-graph``
(``cuda_graph``) replays the whole step as one CUDA graph (cuda_graph.py).

Each kernel is a swap of modules whose parameters stay the same objects under the same names, or
of the optimizer's class (same parameter groups, same state dict), so checkpoints, resumes,
evaluation and exports never see them, and a resumed run may turn them on or off. None is on by
default: ``benchmarks/bench_levers.py`` measures what each one pays on a GPU. The training loop
imports this package only for a run that asks for a lever.

:func:`check` refuses, before a run directory is touched, a lever this device, this network or
this number of processes cannot take; :func:`use_step_kernels` swaps the kernels into the placed
network, :func:`fused_paper_sgd` is the one-pass update, and :func:`speed_up` gives the training
step its bfloat16 weight copies and its CUDA graph.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from alexnet.config import TrainConfig
from alexnet.errors import UserError
from alexnet.speed.cuda_graph import CudaGraphs, GraphedStep, check_cuda_graph

TRITON_KERNELS = ("fused-blocks", "fused-sgd", "bf16-weights")
GROUPED = {"grouped-halves": "halves", "grouped-block-diagonal": "block_diagonal"}


def triton_runs_on(device: torch.device) -> bool:
    """Whether Triton kernels run on ``device``: compiled on a CUDA GPU, or in Triton's interpreter
    on the CPU (``TRITON_INTERPRET=1``, slow: for tests)."""
    from alexnet.speed import fused_blocks

    if not fused_blocks.available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def check(config: TrainConfig, model_args: dict, device: torch.device, processes: int) -> None:
    """Refuse in one line, before a run directory is touched, a lever that this device, this
    network (``model_args``) or this number of processes cannot take."""
    check_step_kernels(config, model_args, device)
    check_cuda_graph(config, device, processes)


def check_step_kernels(config: TrainConfig, model_args: dict, device: torch.device) -> None:
    """Refuse in one line the kernels of ``config.step_kernels`` that ``device`` or the network of
    ``model_args`` cannot take (the network is built on the meta device: nothing is allocated)."""
    names = config.step_kernels
    if not names:
        return
    if model_args.get("arch", "alexnet") != "alexnet":
        raise UserError(f"--step-kernels {','.join(names)}: --step-kernels are for the paper's network, and this run "
                        f"trains {model_args['arch']}'s layout (--arch {model_args['arch']}); leave them out")
    triton_names = [n for n in names if n in TRITON_KERNELS]
    if triton_names and not triton_runs_on(device):
        from alexnet.speed import fused_blocks

        why = ("the triton package is not installed (pip install 'alexnet[triton]')" if not fused_blocks.available()
               else f"they run on CUDA GPUs, and this run is on {device.type}")
        raise UserError(f"--step-kernels {','.join(triton_names)}: these are Triton kernels and {why}; "
                        "leave them out (--step-kernels none turns every one off on a resume)")
    if "bf16-weights" in names:
        if "fused-sgd" not in names:
            raise UserError("--step-kernels bf16-weights reads the bfloat16 weights that fused-sgd writes: "
                            "add fused-sgd (--step-kernels fused-sgd,bf16-weights), or leave bf16-weights out")
        from alexnet.runtime import resolve_runtime

        if resolve_runtime(config, device).precision != "bf16":
            raise UserError("--step-kernels bf16-weights replaces bf16 autocast's weight casts, and this run "
                            "computes in float32: give --precision bf16, or leave bf16-weights out")
    from alexnet.model import AlexNet

    with torch.device("meta"):
        model = AlexNet(**model_args)
    if "conv1-s2d" in names:
        conv = model.features.conv1
        if conv.stride[0] < 2:
            raise UserError(f"--step-kernels conv1-s2d rewrites a strided conv1, and this network's conv1 has stride "
                            f"{conv.stride[0]} (stem {model_args.get('stem', 'paper')!r}); leave conv1-s2d out")
    if "fused-blocks" in names:
        blocks, reasons = fusable_blocks(model)
        if not blocks:
            raise UserError(f"--step-kernels fused-blocks fuses conv, ReLU, LRN, max-pool 3/2 blocks, and this "
                            f"network has none ({'; '.join(reasons)}); leave fused-blocks out")
    if any(n in GROUPED for n in names) and model.towers == 1:
        raise UserError("--step-kernels grouped-*: a one-tower network (--towers 1) has no grouped convolutions; "
                        "leave them out")


def fitting_step_kernels(config: TrainConfig, model_args: dict, device: torch.device) -> tuple[tuple[str, ...], list[str]]:
    """The kernels of ``config.step_kernels`` that this device and network can take, and a line for
    each left out (for experiments, whose variants differ in what they can take)."""
    kept, left_out = [], []
    for name in config.step_kernels:
        try:
            check_step_kernels(config.replace(step_kernels=(name,)), model_args, device)
            kept.append(name)
        except UserError as e:
            left_out.append(str(e))
    return tuple(kept), left_out


def fusable_blocks(model: nn.Module) -> tuple[list[int], list[str]]:
    """The blocks (1, 2) of ``model`` that fuse, and why the others do not."""
    from alexnet.speed.fused_blocks import _fusable

    blocks, reasons = [], []
    for block in (1, 2):
        why = _fusable(model.features, block)
        if why is None:
            blocks.append(block)
        else:
            reasons.append(why)
    return blocks, reasons


def use_step_kernels(model: nn.Module, config: TrainConfig, log: Callable[[str], None] = print) -> nn.Module:
    """Swap the kernels of ``config.step_kernels`` into ``model`` (an AlexNet, placed), in place."""
    names = config.step_kernels
    if names:
        log(f"step kernels: {', '.join(names)}")
    if "conv1-s2d" in names:
        from alexnet.speed.conv1_s2d import use_space_to_depth_conv1

        use_space_to_depth_conv1(model)
    if "fused-blocks" in names:
        from alexnet.speed.fused_blocks import fuse_blocks

        blocks, reasons = fusable_blocks(model)
        fuse_blocks(model, tuple(blocks))
        if reasons:
            log(f"note: fused-blocks fuses block {blocks[0]} only: {'; '.join(reasons)}")
    impl = next((GROUPED[n] for n in names if n in GROUPED), None)
    if impl is not None:  # after fuse_blocks, which would rebuild conv2 as a grouped convolution
        from alexnet.speed.grouped import use_grouped_conv

        use_grouped_conv(model, impl)
    return model


def fused_paper_sgd(config: TrainConfig) -> Callable:
    """The one-pass PaperSGD (``fused-sgd``) for ``config``: under ``on_nonfinite`` "stop" it checks
    the gradients as it reads them (the verdict may come after the update), and with
    ``bf16-weights`` it also writes the bfloat16 copies of the weights."""
    from functools import partial

    from alexnet.speed.fused_sgd import FusedPaperSGD

    return partial(FusedPaperSGD, flat_grads=True, check_finite=config.on_nonfinite == "stop",
                   bf16_copy="bf16-weights" in config.step_kernels)


def speed_up(step, model: nn.Module, config: TrainConfig) -> None:
    """Give ``step`` (a :class:`~alexnet.training.step.Step` over ``model``, placed) the levers of
    ``config`` that change how a step runs: ``bf16-weights`` (the forward pass reads the bfloat16
    weights the one-pass update writes) and ``cuda_graph`` (the whole step captured each epoch and
    replayed)."""
    if "bf16-weights" in config.step_kernels:
        from alexnet.speed.bf16_weights import Bf16Weights

        step.weights = Bf16Weights(model, step.optimizer).active
    if config.cuda_graph:
        step.graph = GraphedStep(lambda images, labels: step.whole(images, labels, for_graph=True),
                                 CudaGraphs(step.rt.device))
