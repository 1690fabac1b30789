"""Learning (section 5): the paper's recipe, one code path for one process or many (torchrun).

Per epoch: shuffle (seeded), for each batch augment on the model's device (random crop, flip,
PCA lighting, mean subtraction), forward, cross-entropy, backward, PaperSGD; then validate on the
centre crop, step the schedule, append a line to metrics.jsonl and write checkpoints. The run
directory holds config.json (the resolved recipe), metrics.jsonl, last.pt (everything needed to
resume), best.pt (weights of the best validation epoch) and curves.png.

Parallelism (section 3.2): under torchrun every rank runs this function. Ranks form replicas x
towers: with ``tower_parallel`` each replica is two ranks holding one tower each (the paper's two
GPUs), otherwise one rank holds the whole (grouped) network. Replicas split the data and average
gradients (DDP). Checkpoints always hold the single-device layout, so a run resumes on any layout.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import checkpoint
from alexnet.config import TrainConfig
from alexnet.data import Store, open_store
from alexnet.data.augment import EvalPreprocess, TrainAugment
from alexnet.data.loader import Loader
from alexnet.distributed import all_reduce_sum, init_from_env, make_process_groups
from alexnet.errors import UserError
from alexnet.evaluate import Member, autocast_for, evaluate
from alexnet.faults import kill_point
from alexnet.model import AlexNet, init_weights_
from alexnet.optim import MilestoneSchedule, PaperSGD, PlateauSchedule, parameter_groups
from alexnet.run_state import (
    Position, RunFiles, StallWatch, load_velocities, rng_state, set_rng_state, velocities,
)


class NonFiniteError(UserError):
    pass


@dataclass
class Runtime:
    device: torch.device
    precision: str  # "fp32" or "bf16"
    channels_last: bool


def resolve_runtime(config: TrainConfig, device: torch.device) -> Runtime:
    precision = config.precision if config.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
    return Runtime(device, precision, channels_last)


def model_args(config: TrainConfig, store: Store) -> dict:
    """Keyword arguments of AlexNet for this recipe and data set (saved in checkpoints)."""
    return dict(
        num_classes=store.num_classes, towers=config.towers, lrn=config.lrn,
        lrn_convention=config.lrn_convention, lrn_before_relu=config.lrn_before_relu,
        overlapping_pool=config.overlapping_pool, activation=config.activation, dropout=config.dropout,
        in_channels=store.channels, input_size=config.crop_size, width=config.width, stem=config.stem,
    )


def data_info(store: Store) -> dict:
    return dict(classes=list(store.classes), image_size=store.image_size, channels=store.channels,
                mean_image=torch.from_numpy(store.mean_image.copy()))


def grads_finite(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).isfinite().all()


def check_data(config: TrainConfig, store: Store, data) -> None:
    if store.num_classes < 2:
        raise UserError(f"{data} has a single class; classification needs at least two")
    if config.crop_size > store.image_size:
        raise UserError(f"--crop-size {config.crop_size} is larger than the prepared images ({store.image_size} px)")


def train(
    config: TrainConfig,
    data: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train with ``config`` on the prepared store ``data``; returns the metrics of every epoch."""
    store = open_store(data)
    check_data(config, store, data)
    d = init_from_env(device=config.device)
    if not d.is_main:  # rank 0 speaks for the run; what it logs is reduced over the ranks
        log = _silent
    groups = make_process_groups(d.world_size, 2 if config.tower_parallel else 1)
    rt = resolve_runtime(config, d.device)
    files = RunFiles(Path(run_dir), write=d.is_main)
    if not resume and files.last.exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not files.last.exists():
        raise UserError(f"nothing to resume: {files.last} does not exist; start without --resume")
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    args = model_args(config, store)
    model: nn.Module = init_weights_(AlexNet(**args), config.init)
    if config.tower_parallel:
        from alexnet.towers import TowerParallelAlexNet

        model = TowerParallelAlexNet.from_grouped(model, groups.tower_group, groups.tower)
    model.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.preserve_format)
    optimizer = PaperSGD(parameter_groups(model, config.lr, config.weight_decay, config.param_groups),
                         lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.schedule == "plateau":
        schedule = PlateauSchedule(optimizer, factor=config.lr_factor, patience_epochs=config.plateau_patience_epochs,
                                   threshold=config.plateau_threshold, max_reductions=config.max_lr_reductions)
    else:
        schedule = MilestoneSchedule(optimizer, config.milestones_epochs, factor=config.lr_factor)
    # Augmentation is drawn per replica (both towers of a replica see the same crops);
    # dropout per rank.
    generator = torch.Generator(rt.device).manual_seed(config.seed * 1000 + groups.replica)
    torch.manual_seed(config.seed * 1000 + d.rank)

    def grouped(tensors: dict) -> dict:  # tower slices -> single-device layout (collective)
        return model.gather_grouped(tensors) if config.tower_parallel else tensors

    def local(tensors: dict) -> dict:  # single-device layout -> this rank's part
        if not config.tower_parallel:
            return tensors
        from alexnet.towers import tower_state_dict_from_grouped

        return tower_state_dict_from_grouped(tensors, groups.tower)

    pos = Position()
    if resume:
        saved = checkpoint.load(files.last)
        checkpoint.load_model_state(AlexNet(**args), saved["model"], str(files.last))  # same architecture?
        model.load_state_dict(local(saved["model"]))
        load_velocities(model, optimizer, local(saved["velocity"]))
        schedule.load_state_dict(saved["schedule"])
        pos = Position(**saved["progress"])
        states, old = saved["rng"], saved["config"]
        if config.lr == old.get("lr", config.lr):
            for group, lr in zip(optimizer.param_groups, saved["lrs"]):
                group["lr"] = lr
        else:  # --lr given on resume: a hand-made step of the schedule, as the paper's authors took
            log(f"learning rate {config.lr:g} from --lr replaces the checkpoint's {saved['lrs'][0]:g} from here on")
        if groups.replica > 0:  # the saved partial sums of the epoch cover every replica: count them once
            pos.loss_sum = pos.correct = pos.seen = 0.0
        old_replicas = len(states) // (2 if old.get("tower_parallel") else 1)
        pos.step_in_epoch = _resumed_step(pos.step_in_epoch, old["batch_size_per_device"] * old_replicas,
                                          config.batch_size_per_device * groups.replicas, files.last)
        if len(states) == d.world_size and old_replicas == groups.replicas:
            set_rng_state(states[d.rank], rt.device, generator)
        else:  # another layout of the ranks: reseed from where the run stands
            generator.manual_seed(config.seed * 1000 + groups.replica + 7919 * pos.global_step)
            torch.manual_seed(config.seed * 1000 + d.rank + 7919 * pos.global_step)
        log(f"resuming {run_dir} at epoch {pos.epoch + 1}, step {pos.step_in_epoch} (global step {pos.global_step})")
    files.start(config, resume, pos.epoch)

    step_model = model
    if groups.replicas > 1:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            process_group=groups.data_parallel_group)
    if config.compile:
        step_model = torch.compile(step_model)
    pin = rt.device.type == "cuda"
    shard = dict(rank=groups.replica, world_size=groups.replicas, workers=config.loader_workers, pin_memory=pin)
    train_loader = Loader(store.split("train"), config.batch_size_per_device, shuffle=True, seed=config.seed,
                          drop_last=True, **shard)
    # Validation: every rank of a replica evaluates the same shard; counts are summed over replicas.
    val_loader = Loader(store.split("val"), config.batch_size_per_device, shuffle=False, seed=config.seed,
                        drop_last=False, **shard)
    if len(train_loader) == 0:
        raise UserError(f"the training split has {len(store.split('train'))} images, fewer than one global batch of "
                        f"{config.batch_size_per_device * groups.replicas}; lower --batch-size-per-device")
    augment = TrainAugment(store.mean_image, store.pca_eigenvalues, store.pca_eigenvectors, crop_size=config.crop_size,
                           random_crop=config.random_crop, flip=config.flip, pca_lighting_std=config.pca_lighting_std,
                           subtract_mean=config.subtract_mean, input_scale=config.input_scale).to(rt.device)
    val_member = Member(model, EvalPreprocess(store.mean_image, crop_size=config.crop_size,
                                              subtract_mean=config.subtract_mean,
                                              input_scale=config.input_scale).to(rt.device), list(store.classes))

    # On the CPU the C kernel cuts the crops straight out of the memory-mapped store into one
    # reused buffer (each step is done with its input before the next batch is cut); elsewhere
    # uint8 batches are gathered by the loader's threads and augmented on the model's device.
    cut_from_store = rt.device.type == "cpu" and augment.fused_on_cpu()
    train_images, train_labels, reused = store.split("train").images, train_loader.labels, []

    def training_input(batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not cut_from_store:
            images, labels = batch
            labels = labels.to(rt.device, non_blocking=True)
            return augment(images.to(rt.device, non_blocking=True), generator), labels
        out = reused[0] if reused and len(reused[0]) == len(batch) else None
        x = augment.from_store(train_images, batch, generator, out=out)
        reused[:] = [x.permute(0, 2, 3, 1)]  # the (N, crop, crop, C) storage
        return x, torch.from_numpy(train_labels[batch])

    def reduce_replicas(t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t, groups.data_parallel_group) if groups.replicas > 1 else t

    steps_per_epoch = min(len(train_loader), config.max_steps_per_epoch or len(train_loader))
    stall = StallWatch(store.num_classes, patience_steps=min(2 * steps_per_epoch, 2000))
    sync_every = 1 if (rt.device.type == "cpu" or config.on_nonfinite == "skip") else 20

    def save_last() -> None:
        states = [None] * d.world_size
        mine = {k: v.cpu() for k, v in rng_state(rt.device, generator).items()}
        if d.world_size > 1:
            torch.distributed.all_gather_object(states, mine)
        else:
            states = [mine]
        weights, velocity = grouped(model.state_dict()), grouped(velocities(model, optimizer))
        progress = asdict(pos)  # the epoch's partial sums over all replicas, not rank 0's alone
        sums = reduce_replicas(torch.tensor([pos.loss_sum, pos.correct, pos.seen], dtype=torch.float64))
        progress.update(zip(("loss_sum", "correct", "seen"), sums.tolist()))
        if d.is_main:
            checkpoint.save(files.last, dict(
                model_args=args, data=data_info(store), config=config.to_dict(), model=weights, velocity=velocity,
                lrs=[g["lr"] for g in optimizer.param_groups], schedule=schedule.state_dict(), rng=states,
                progress=progress))

    metrics = files.read_metrics() if d.is_main else []
    for epoch in range(pos.epoch, config.epochs):
        model.train()
        train_loader.set_epoch(epoch, start_step=pos.step_in_epoch)
        bar = _progress(show_progress and d.is_main, steps_per_epoch, pos.step_in_epoch,
                        f"epoch {epoch + 1}/{config.epochs}")
        loss_sum, correct = (torch.zeros((), device=rt.device, dtype=torch.float64) for _ in range(2))
        pending_nonfinite = torch.zeros((), device=rt.device, dtype=torch.bool)
        interval_loss, interval_steps = 0.0, 0
        t0, images_done = time.perf_counter(), 0
        for batch in (train_loader.index_batches() if cut_from_store else train_loader):
            if pos.step_in_epoch >= steps_per_epoch:
                break
            x, labels = training_input(batch)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(rt.device, rt.precision):
                logits = step_model(x)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            pending_nonfinite |= ~(torch.isfinite(loss) & grads_finite(model))
            kill_point("step")
            pos.step_in_epoch += 1
            pos.global_step += 1
            every = config.checkpoint_every_steps
            save_now = bool(every) and pos.global_step % every == 0 and pos.step_in_epoch < steps_per_epoch
            synced = pos.step_in_epoch % sync_every == 0 or pos.step_in_epoch == steps_per_epoch or save_now
            if synced and d.world_size > 1:  # every rank stops or skips together
                flag = pending_nonfinite.to(torch.int32)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                pending_nonfinite = flag.bool()
            if synced and bool(pending_nonfinite):
                if config.on_nonfinite == "stop":
                    raise NonFiniteError(
                        f"the loss or a gradient became non-finite at epoch {epoch + 1}, step {pos.step_in_epoch} "
                        f"(global step {pos.global_step}); {files.last} keeps the last good state. "
                        "Lower --lr, or pass --on-nonfinite skip to skip such steps")
                pos.skipped_steps += 1
                pending_nonfinite.zero_()
                _write(bar, log, f"warning: non-finite loss or gradient at epoch {epoch + 1} "
                                 f"step {pos.step_in_epoch}; step skipped")
            else:
                optimizer.step()
                loss_sum += loss.detach().double() * len(labels)
                correct += (logits.detach().argmax(1) == labels).sum()
                pos.seen += len(labels)
            images_done += len(labels) * groups.replicas
            if synced:
                interval_loss, interval_steps = interval_loss + float(loss.detach()), interval_steps + 1
                if pos.step_in_epoch % 10 == 0 or pos.step_in_epoch == steps_per_epoch:
                    mean_loss, interval_loss, interval_steps = interval_loss / interval_steps, 0.0, 0
                    if not pos.stall_warned and stall.observe(pos.global_step, mean_loss):
                        pos.stall_warned = True
                        _write(bar, log, stall.message(pos.global_step - stall.since_step))
            if bar is not None:
                bar.update(1)
                if synced:
                    rate = images_done / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=f"{rate:.0f}", refresh=False)
            if save_now:
                _fold(pos, loss_sum, correct)
                save_last()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        _fold(pos, loss_sum, correct)
        totals = reduce_replicas(torch.tensor([pos.loss_sum, pos.correct, pos.seen], dtype=torch.float64))
        train_loss = totals[0].item() / max(totals[2].item(), 1)
        train_err = 1 - totals[1].item() / max(totals[2].item(), 1)
        val = evaluate([val_member], val_loader, precision=rt.precision, reduce=reduce_replicas)
        lr = optimizer.param_groups[0]["lr"]
        reduced = schedule.step(val["top1_error"])
        line = dict(epoch=epoch + 1, train_loss=train_loss, train_top1_error=train_err,
                    val_top1_error=val["top1_error"], val_top5_error=val["top5_error"], lr=lr,
                    images_per_s=images_done / max(seconds, 1e-9), epoch_seconds=seconds,
                    global_step=pos.global_step, skipped_steps=pos.skipped_steps)
        metrics.append(line)
        files.append_metrics(line)
        kill_point("metrics-append")
        log(f"epoch {epoch + 1}: train loss {train_loss:.4f}, train error {train_err:.2%}, "
            f"val top-1 error {val['top1_error']:.2%}, top-5 {val['top5_error']:.2%}, lr {lr:g}, "
            f"{line['images_per_s']:.0f} images/s" + (f"; lr divided by {1 / config.lr_factor:g}" if reduced else ""))
        if not pos.stall_warned and stall.observe(pos.global_step, train_loss):
            pos.stall_warned = True
            log(stall.message(pos.global_step - stall.since_step))
        improved = val["top1_error"] < pos.best_val_top1_error
        pos = Position(epoch=epoch + 1, global_step=pos.global_step, skipped_steps=pos.skipped_steps,
                       best_val_top1_error=min(pos.best_val_top1_error, val["top1_error"]),
                       stall_warned=pos.stall_warned)
        save_last()
        if improved:
            weights = grouped(model.state_dict())
            if d.is_main:
                checkpoint.save(files.best, dict(model_args=args, data=data_info(store), config=config.to_dict(),
                                                 model=weights, epoch=epoch + 1, val=val))
        if d.is_main:
            from alexnet.plots import plot_curves

            plot_curves(metrics, files.dir / "curves.png")
    return metrics


def _resumed_step(step: int, old_global_batch: int, new_global_batch: int, source: Path) -> int:
    """Where a checkpoint taken ``step`` steps of ``old_global_batch`` images into an epoch stands in
    steps of ``new_global_batch`` (another number of replicas or batch per device).

    Step k of an epoch takes positions [kB, (k+1)B) of the epoch's order over all replicas
    together (B the global batch; loader.py's strided shards), so the count of images is what carries over.
    """
    images = step * old_global_batch
    if images % new_global_batch:
        raise UserError(f"{source} stands {images} images into its epoch, not a whole number of global batches of "
                        f"{new_global_batch}; resume with a global batch (ranks x batch per device) that divides "
                        f"{images}, e.g. the run's own {old_global_batch}")
    return images // new_global_batch


def _silent(message: str) -> None:
    pass


def _fold(pos: Position, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
    """Move the device-side sums of the epoch into the position (one host sync)."""
    pos.loss_sum += loss_sum.item()
    pos.correct += correct.item()
    loss_sum.zero_()
    correct.zero_()


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def _write(bar, log: Callable[[str], None], message: str) -> None:
    if bar is not None:
        bar.write(message)
    else:
        log(message)
