"""``step_kernels`` through ``train()``: a run with the faster kernels swapped in trains as the
standard step does (the same losses, weights and velocities, to float32 rounding), writes the same
checkpoints, resumes either way, and a kernel the device or the network cannot take is refused in
one line before the run directory exists.

Without a GPU the Triton kernels run in Triton's interpreter (tests/conftest.py), so the network is
small: the paper's stem on 67-pixel crops, 1/24 of the paper's widths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.errors import UserError
from alexnet.speed import fused_blocks
from alexnet.training import train
from helpers import QUIET


def needs_triton(test):
    """Skipped without triton; slow, as Triton's interpreter runs its kernels without a GPU."""
    return pytest.mark.slow(pytest.mark.skipif(not fused_blocks.available(), reason="needs triton")(test))


PAPER_STEM = TrainConfig(width=1 / 24, crop_size=67, batch_size_per_device=4, epochs=2, max_steps_per_epoch=2,
                         loader_workers=1, init="he", input_scale=1 / 64, precision="fp32")


@pytest.fixture(autouse=True)
def _full_float32(monkeypatch):
    """On a GPU, float32 convolutions and matmuls without TF32, so that runs agree to float32 rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(matmul)


@pytest.fixture(scope="module")
def store(shared_store) -> Path:
    return shared_store(per_class=8, size=76, image_size=72)


def _final(run: Path) -> dict:
    saved = torch.load(run / "last.pt", weights_only=False)
    return dict(model=saved["model"], velocities=saved["velocity"])


def _assert_same_run(metrics_a, metrics_b, run_a: Path, run_b: Path) -> None:
    for a, b in zip(metrics_a, metrics_b, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_top1_error"] == b["val_top1_error"]
    a, b = _final(run_a), _final(run_b)
    assert a["model"].keys() == b["model"].keys()  # the same names: checkpoints do not see the kernels
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-4, atol=1e-6, msg=name)
    assert a["velocities"].keys() == b["velocities"].keys()
    for key in a["velocities"]:
        torch.testing.assert_close(a["velocities"][key], b["velocities"][key], rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def standard(store, tmp_path_factory) -> tuple[list[dict], Path]:
    run = tmp_path_factory.mktemp("standard") / "run"
    return train(PAPER_STEM, store, run, **QUIET), run


@needs_triton
def test_space_to_depth_one_pass_sgd_and_dense_halves_train_as_the_standard_step(store, standard, tmp_path):
    config = PAPER_STEM.replace(step_kernels=("conv1-s2d", "fused-sgd", "grouped-halves"))
    metrics = train(config, store, tmp_path / "run", **QUIET)
    _assert_same_run(metrics, standard[0], tmp_path / "run", standard[1])


@needs_triton
def test_fused_blocks_train_as_the_standard_step(store, standard, tmp_path):
    config = PAPER_STEM.replace(epochs=1, max_steps_per_epoch=1, batch_size_per_device=2)
    ours = train(config.replace(step_kernels=("all",)), store, tmp_path / "ours", **QUIET)
    theirs = train(config, store, tmp_path / "theirs", **QUIET)
    assert ours[0]["train_loss"] == pytest.approx(theirs[0]["train_loss"], rel=1e-5)
    assert ours[0]["val_top1_error"] == theirs[0]["val_top1_error"]
    a, b = _final(tmp_path / "ours"), _final(tmp_path / "theirs")
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-4, atol=1e-6, msg=name)


@needs_triton
def test_a_run_resumes_with_the_kernels_switched_on(store, standard, tmp_path):
    """Epoch 1 standard, epoch 2 with the kernels: the run of two standard epochs (runtime keys may change)."""
    run = tmp_path / "run"
    train(PAPER_STEM.replace(epochs=1), store, run, **QUIET)
    lines = []
    config = PAPER_STEM.replace(step_kernels=("conv1-s2d", "fused-sgd", "grouped-block-diagonal"))
    metrics = train(config, store, run, resume=True,
                    show_progress=False, log=lines.append)
    assert any("step_kernels" in line for line in lines), lines  # the change of a runtime key is logged
    assert "step kernels: conv1-s2d, fused-sgd, grouped-block-diagonal" in lines
    _assert_same_run(metrics, standard[0], run, standard[1])


@needs_triton
def test_a_run_with_the_kernels_resumes_without_them_and_its_checkpoints_are_plain(store, standard, tmp_path):
    """The one-pass update keeps weights and velocities as views of flat buffers: what it saves is still
    one plain tensor per name, which evaluation, export and a standard resume read."""
    from alexnet.trained import load_member
    from alexnet.export import write_export

    run = tmp_path / "run"
    train(PAPER_STEM.replace(epochs=1, step_kernels=("conv1-s2d", "fused-sgd")), store, run, **QUIET)
    saved = torch.load(run / "last.pt", weights_only=False)
    for part in ("model", "velocity"):
        for name, tensor in saved[part].items():
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), (part, name)
    load_member(str(run / "best.pt"), torch.device("cpu"))
    write_export(saved, tmp_path / "export", ["safetensors"], source=str(run / "last.pt"))
    metrics = train(PAPER_STEM, store, run, resume=True, **QUIET)
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["train_loss"])) for m in metrics)


@needs_triton
def test_the_forward_pass_on_the_updates_bf16_weights_trains_as_autocast_bit_for_bit(store, tmp_path, monkeypatch):
    """bf16-weights against the same run whose forward pass lets autocast cast the weights: the
    same losses and the same weights, bit for bit, also over a resume."""
    from alexnet.speed.bf16_weights import UseCopy

    bf16 = PAPER_STEM.replace(precision="bf16", step_kernels=("fused-sgd",))
    theirs = train(bf16, store, tmp_path / "theirs", **QUIET)
    read, apply = [], UseCopy.apply
    monkeypatch.setattr(UseCopy, "apply", lambda weight, copy: read.append(copy.shape) or apply(weight, copy))
    lines = []
    ours_config = bf16.replace(step_kernels=("fused-sgd", "bf16-weights"))
    train(ours_config.replace(epochs=1), store, tmp_path / "ours", show_progress=False, log=lines.append)
    ours = train(ours_config, store, tmp_path / "ours", resume=True, **QUIET)
    assert "step kernels: fused-sgd, bf16-weights" in lines
    assert len(read) == 8 * 2  # 8 layers, at the second step of each start (the first has no copies yet)
    assert [m["train_loss"] for m in ours] == [m["train_loss"] for m in theirs]
    a, b = _final(tmp_path / "ours"), _final(tmp_path / "theirs")
    assert all(torch.equal(a["model"][name], b["model"][name]) for name in b["model"])


@pytest.mark.parametrize("changes, message", [
    (dict(step_kernels=("bf16-weights",), precision="bf16"), "reads the bfloat16 weights that fused-sgd writes: add "
                                                             "fused-sgd"),
    (dict(step_kernels=("fused-sgd", "bf16-weights")), "this run computes in float32: give --precision bf16"),
    (dict(step_kernels=("conv1-s2d",), stem="small", crop_size=28), "conv1 has stride 1"),
    (dict(step_kernels=("fused-blocks",), lrn=False), "has none"),
    (dict(step_kernels=("fused-blocks",), activation="tanh"), "has none"),
    (dict(step_kernels=("grouped-halves",), towers=1), "no grouped convolutions"),
])
def test_a_kernel_the_network_cannot_take_is_refused_before_the_run_exists(store, tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        train(PAPER_STEM.replace(**changes), store, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def test_triton_kernels_on_a_cpu_without_the_interpreter_are_refused(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(UserError, match="fused-sgd: these are Triton kernels"):
        train(PAPER_STEM.replace(step_kernels=("fused-sgd",), device="cpu"), store, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("changes, message", [
    (dict(step_kernels=("fused",)), "no kernel 'fused'"),
    (dict(step_kernels=("grouped-halves", "grouped-block-diagonal")), "choose one"),
    (dict(step_kernels=("all", "none")), "'none' turns every kernel off, so it goes alone"),
    (dict(loader_workers=-2), "or -1 \\(auto\\)"),
    (dict(step_kernels=("all",), tower_parallel=True), "drop one of the two"),
    (dict(compile_mode="reduce-overhead"), "needs compile on"),
])
def test_bad_combinations_are_refused_by_the_recipe(changes, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**changes)


def test_all_names_the_three_kernels_in_order():
    assert TrainConfig(step_kernels=("fused-sgd", "all")).step_kernels == ("conv1-s2d", "fused-blocks", "fused-sgd")


def test_the_cli_takes_the_kernels_as_a_list_and_refuses_a_bad_name(store, tmp_path, capsys):
    assert main(["train", str(store), "--out", str(tmp_path / "run"), "--step-kernels", "conv1-s2d,bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no kernel 'bogus'" in err[0]
    assert not (tmp_path / "run").exists()


def test_kernels_written_as_several_words_are_one_line_with_how_to_write_them(store, tmp_path, capsys):
    assert main(["train", str(store), "--out", str(tmp_path / "run"), "--step-kernels", "conv1-s2d", "fused-sgd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--step-kernels takes one word: join its items with commas" in err[0], err
    assert not (tmp_path / "run").exists()


@needs_triton
def test_an_experiment_variant_runs_without_the_kernels_it_cannot_take(store, tmp_path):
    """An ablation's no-LRN variant has no block to fuse: it trains with the other kernels, and says so."""
    import json

    from alexnet.experiments.runs import train_or_resume

    lines = []
    config = PAPER_STEM.replace(epochs=1, lrn=False, step_kernels=("conv1-s2d", "fused-blocks"))
    metrics = train_or_resume(config, store, tmp_path / "no-lrn", show_progress=False, log=lines.append)
    assert len(metrics) == 1
    assert any(line.startswith("note: no-lrn runs without it: --step-kernels fused-blocks") for line in lines), lines
    assert "step kernels: conv1-s2d" in lines
    assert json.loads((tmp_path / "no-lrn" / "config.json").read_text())["step_kernels"] == ["conv1-s2d"]


@needs_triton
def test_a_resume_on_a_machine_without_triton_turns_the_kernels_off_with_none(store, tmp_path, monkeypatch, capsys):
    import json

    run = tmp_path / "run"
    train(PAPER_STEM.replace(epochs=1, step_kernels=("conv1-s2d", "fused-sgd")), store, run, **QUIET)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # now Triton kernels cannot run on this CPU
    resume = ["train", str(store), "--out", str(run), "--resume", "--epochs", "2", "--device", "cpu", "--quiet"]
    assert main(resume) == 2
    assert "--step-kernels none" in capsys.readouterr().err
    assert main(resume + ["--step-kernels", "none"]) == 0
    assert json.loads((run / "config.json").read_text())["step_kernels"] == []
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@needs_triton
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's NumPy meets inf and NaN
@pytest.mark.parametrize("every", [1, 4])
def test_the_one_pass_update_checks_the_gradients_for_the_guard(store, tmp_path, monkeypatch, every):
    """lr 1e30 makes step 2's values non-finite: with fused-sgd the run stops where the standard step
    stops (the first read at or after step 2), and no pass over the gradients was made for it."""
    from alexnet.training import step as guards

    config = PAPER_STEM.replace(lr=1e30, nonfinite_check_every_steps=every, max_steps_per_epoch=4)
    first_read = max(2, every)
    with pytest.raises(guards.NonFiniteError, match=rf"epoch 1, step {first_read} "):
        train(config, store, tmp_path / "standard", **QUIET)

    def no_pass(model):
        raise AssertionError("the guard read the gradients: the update's flag went unused")

    monkeypatch.setattr(guards, "grads_finite", no_pass)
    with pytest.raises(guards.NonFiniteError, match=rf"epoch 1, step {first_read} "):
        train(config.replace(step_kernels=("fused-sgd",)), store, tmp_path / "fused", **QUIET)


@needs_triton
def test_the_update_leaves_the_check_to_the_guard_when_a_group_is_frozen_or_skip_is_asked():
    """A frozen group's gradients are not read by the update, and 'skip' needs the verdict before it."""
    from alexnet.speed.fused_sgd import FusedPaperSGD

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    groups = [dict(params=list(net[0].parameters())), dict(params=list(net[1].parameters()))]
    opt = FusedPaperSGD(groups, lr=0.1, check_finite=True, flat_grads=True)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert opt.checked_nonfinite() is not None and int(opt.checked_nonfinite()) == 0
    net[0].weight.grad[0, 0] = float("nan")
    opt.step()
    assert int(opt.checked_nonfinite()) == 1  # the kernel saw the NaN as it read the gradient
    opt.param_groups[0]["frozen"] = True
    opt.step()
    assert opt.checked_nonfinite() is None  # net[0]'s gradients went unread: the guard reads them
    from alexnet.config import TrainConfig as Config
    from alexnet.training.recipe import build_optimizer

    optimizer, _ = build_optimizer(Config(step_kernels=("fused-sgd",), on_nonfinite="skip"), net)
    assert optimizer.check_finite is False
