"""``--cuda-graph``: the whole training step captured once per epoch and replayed.

On a CPU the capture is a stand-in that replays by calling the step again on the static tensors
(and writes its outputs into the tensors the capture returned, as a replay does), so what is
checked here is everything but the GPU: the warm-up steps are real steps, each replay reads the
batch it is given, the outputs are read after each replay, a new capture follows each epoch (a
new learning rate is taken), and a whole train() run takes exactly the steps of a run without
graphs. On a GPU the real capture is compared with the eager step (skipped here; run by
benchmarks/gpu_checks.sh).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.config import TrainConfig
from alexnet.errors import UserError
from alexnet.optim import PaperSGD
from alexnet.training import train
from alexnet.speed.cuda_graph import Captured, GraphedStep, check_cuda_graph
from helpers import QUIET


class ReplayByCalling:
    """A capture that records the step and runs it again at each replay; it counts what it does."""

    def __init__(self) -> None:
        self.warmed = self.captures = self.replays = 0

    def warm(self, step):
        self.warmed += 1
        return step()

    def capture(self, step):
        self.captures += 1
        captured = Captured(None, None)

        def replay():
            self.replays += 1
            out = step()
            if captured.outputs is None:
                captured.outputs = out  # a real capture returns these at once; the first replay writes them
            else:
                for static, new in zip(captured.outputs, out):
                    static.copy_(new)

        captured.replay = replay
        return captured


def _net_and_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    opt = PaperSGD(net.parameters(), lr=0.1)

    def step(x, labels):
        logits = net(x)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss.detach(), logits.detach()

    return net, opt, step


def _batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 2, 2, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def test_warm_up_capture_and_replays_take_the_eager_steps():
    net, opt, step = _net_and_step()
    ref_net, ref_opt, ref_step = _net_and_step()
    backend = ReplayByCalling()
    graphed = GraphedStep(step, backend, warmup_steps=2)
    losses = []
    for epoch_batches in (_batches(5), _batches(4)):
        for x, labels in epoch_batches:
            loss, logits = graphed(x, labels)
            ref_loss, ref_logits = ref_step(x, labels)
            assert torch.equal(loss, ref_loss) and torch.equal(logits, ref_logits)
            losses.append(float(loss))
        for group in (opt.param_groups[0], ref_opt.param_groups[0]):
            group["lr"] /= 10  # as the schedule does between epochs
        graphed.recapture()
    assert (backend.warmed, backend.captures, backend.replays) == (4, 2, 5)  # 2 + 2 warm, 3 + 2 replayed
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref_net.parameters()))
    assert len(set(losses)) == len(losses)  # each step read its own batch


def test_a_batch_of_another_shape_is_refused_after_the_capture():
    _, _, step = _net_and_step()
    graphed = GraphedStep(step, ReplayByCalling(), warmup_steps=0)
    x, labels = _batches(1)[0]
    graphed(x, labels)
    with pytest.raises(ValueError, match=r"takes batches of shape \(4, 3, 2, 2\)"):
        graphed(x[:2], labels[:2])


@pytest.mark.parametrize("changes, processes, device, words", [
    (dict(), 1, "cpu", "records CUDA kernels, and this run is on cpu"),
    (dict(), 2, "cuda", "runs in one process, and this run has 2"),
    (dict(on_nonfinite="skip", nonfinite_check_every_steps=1), 1, "cuda", "--on-nonfinite skip decides"),
    (dict(compile=True), 1, "cuda", "--compile makes graphs of its own"),
])
def test_what_a_graph_cannot_follow_is_refused_in_one_line(changes, processes, device, words):
    config = TrainConfig(cuda_graph=True, **changes)
    with pytest.raises(UserError, match=words):
        check_cuda_graph(config, torch.device(device), processes)
    check_cuda_graph(TrainConfig(**changes), torch.device(device), processes)  # off: nothing to refuse


@pytest.fixture(scope="module")
def store(shared_store) -> Path:
    return shared_store()


SMALL = TrainConfig(stem="small", width=0.125, crop_size=28, batch_size_per_device=8, epochs=3, max_steps_per_epoch=5,
                    loader_workers=1, schedule="milestones", milestones_epochs=(1, 2), dropout=0.0)


@pytest.mark.slow
def test_a_run_with_the_graph_takes_the_steps_of_a_run_without(store, tmp_path, monkeypatch):
    """Three epochs of four steps, the lr divided after each: three captures (one per epoch), each
    after three warm-up steps, and the same losses, errors and weights as without the graph."""
    theirs = train(SMALL, store, tmp_path / "theirs", **QUIET)
    backend = ReplayByCalling()
    monkeypatch.setattr("alexnet.speed.levers.CudaGraphs", lambda device: backend)
    monkeypatch.setattr("alexnet.speed.levers.check_cuda_graph", lambda config, device, processes: None)
    ours = train(SMALL.replace(cuda_graph=True), store, tmp_path / "ours", **QUIET)
    steps = ours[-1]["global_step"]
    assert steps >= 12 and (backend.warmed, backend.captures, backend.replays) == (9, 3, steps - 9)
    assert [m["lr"] for m in ours] == [0.01, 0.001, 0.0001]
    for a, b in zip(ours, theirs, strict=True):
        assert (a["train_loss"], a["train_top1_error"], a["val_top1_error"]) == \
               (b["train_loss"], b["train_top1_error"], b["val_top1_error"])
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=False)["model"] for r in ("ours", "theirs"))
    assert all(torch.equal(a[name], b[name]) for name in b)


def test_the_cli_refuses_the_graph_off_a_gpu(store, tmp_path, capsys):
    from alexnet.cli import main

    assert main(["train", str(store), "--out", str(tmp_path / "run"), "--cuda-graph", "--device", "cpu",
                 "--stem", "small", "--crop-size", "28", "--batch-size-per-device", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cuda-graph: it records CUDA kernels, and this run is on cpu" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_captured_step_trains_as_the_eager_one(store, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    gpu = SMALL.replace(device="cuda", max_steps_per_epoch=8)
    theirs = train(gpu, store, tmp_path / "theirs", **QUIET)
    ours = train(gpu.replace(cuda_graph=True), store, tmp_path / "ours", **QUIET)
    for a, b in zip(ours, theirs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=False)["model"] for r in ("ours", "theirs"))
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)
