"""The whole training step (forward, loss, backward, update) replayed as one CUDA graph (``--cuda-graph``).

An eager step launches a few hundred kernels, each from Python; at batch 128 on a fast GPU the
host can take longer to launch them than the GPU takes to run them. A CUDA graph records the
step's kernels once and replays them with one launch. What a replay reads and writes must stay
where the capture saw it, so:

* the batch is copied into two static tensors (images and labels) that the captured step reads;
  the loss and the logits it writes are static tensors too, read after each replay;
* the parameters, their gradients and the optimizer's buffers live across steps already (the
  gradients are zeroed in place, not set to None, once they exist);
* what the host decides is frozen into the graph: the learning rate, the frozen layers, the
  autocast precision. The graph is therefore captured afresh each epoch (the schedule and the
  epoch's settings change only between epochs), after ``warmup_steps`` eager steps on a side
  stream, which are real steps of the epoch and let cuDNN choose its algorithms and every buffer
  be made before the capture. Capturing records the kernels without running them; the step
  that captures then replays the graph for its own batch.

So a run with graphs takes the same steps as one without, in the same order, on the same data.
What the graph cannot follow is refused before the run starts (:func:`check_cuda_graph`): more
than one process, ``--on-nonfinite skip`` (its verdict must come between the backward pass and
the update), ``--compile`` (torch.compile's ``reduce-overhead`` mode makes graphs of its own) and
the towers on two ranks.

The step captured is :meth:`alexnet.training.step.Step.whole` (``for_graph``: autocast keeps no
casts of the weights, the gradients are zeroed in place). The capture itself is
:class:`CudaGraphs`; tests on a CPU give :class:`GraphedStep` a stand-in that
replays by calling the step again on the static tensors, which checks all of the above but the GPU.
"""

from __future__ import annotations

from typing import Callable

import torch

from alexnet.config import TrainConfig
from alexnet.errors import UserError

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
WARMUP_STEPS = 3


def check_cuda_graph(config: TrainConfig, device: torch.device, processes: int) -> None:
    """Refuse in one line a ``cuda_graph`` run that a graph of the whole step cannot follow."""
    if not config.cuda_graph:
        return
    why = None
    if device.type != "cuda":
        why = f"it records CUDA kernels, and this run is on {device.type}"
    elif processes > 1:
        why = f"it runs in one process, and this run has {processes}"
    elif config.on_nonfinite == "skip":
        why = "--on-nonfinite skip decides between the backward pass and the update, inside the graph"
    elif config.compile:
        why = "--compile makes graphs of its own with --compile-mode reduce-overhead"
    if why is not None:
        raise UserError(f"--cuda-graph: {why}; leave --cuda-graph out")


class CudaGraphs:
    """Warm-up steps on a side stream and captures with ``torch.cuda.graph`` (PyTorch's recipe for
    a whole network)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def warm(self, step: Callable[[], tuple]) -> tuple:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def capture(self, step: Callable[[], tuple]) -> "Captured":
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's threads go on pinning batches while this thread captures; in
        # the default mode ('global') CUDA refuses their calls and the capture fails
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = step()
        return Captured(graph.replay, out)


class Captured:
    """A captured step: ``replay()`` runs it again; ``outputs`` are the tensors it writes."""

    def __init__(self, replay: Callable[[], None], outputs: tuple | None) -> None:
        self.replay, self.outputs = replay, outputs


class GraphedStep:
    """``step(images, labels) -> (loss, logits)`` (forward, loss, backward and update), run eagerly for
    ``warmup_steps`` steps, then captured once and replayed; :meth:`recapture` (at each epoch's
    start) goes back to warming up. Call it with batches of one shape."""

    def __init__(self, step: Step, backend=None, warmup_steps: int = WARMUP_STEPS) -> None:
        self.step, self.backend, self.warmup_steps = step, backend, warmup_steps
        self.captured: Captured | None = None
        self.images = self.labels = None
        self.warmed = 0

    def recapture(self) -> None:
        """Capture afresh after the next ``warmup_steps`` eager steps (the learning rate or the
        frozen layers may have changed since the last capture)."""
        self.captured, self.images, self.labels, self.warmed = None, None, None, 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.captured is None and self.warmed < self.warmup_steps:
            self.warmed += 1
            return self.backend.warm(lambda: self.step(images, labels))
        if self.captured is None:
            self.images = torch.empty_like(images).copy_(images)  # empty_like keeps the layout (channels_last)
            self.labels = labels.clone()
            self.captured = self.backend.capture(lambda: self.step(self.images, self.labels))
        else:
            if images.shape != self.images.shape or labels.shape != self.labels.shape:
                raise ValueError(f"a captured step takes batches of shape {tuple(self.images.shape)}, got "
                                 f"{tuple(images.shape)}")
            self.images.copy_(images)  # into the captured layout, whatever the batch's
            self.labels.copy_(labels)
        self.captured.replay()
        return self.captured.outputs
