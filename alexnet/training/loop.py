"""Learning (section 5): the loop, one code path for one process or many (torchrun).

Per epoch: the epoch's seeded order of the training images, and for each batch augmentation on
the model's device and one :class:`~alexnet.training.step.Step` (forward, cross-entropy, backward,
PaperSGD), then the bookkeeping (:func:`train_one_epoch`); then the validation error on the centre
crop (:func:`validate`), a step of the schedule, a line of metrics and the checkpoints
(:func:`end_epoch`). What each part owns:

    step.py          one training step: autocast, forward, loss, backward, non-finite policy, update
    recipe.py        the network, PaperSGD, the schedule and the augmentation from the config
    layout.py        how the ranks hold the network: placement, DDP, shards, reductions, seeds
    state.py         the run state a checkpoint holds, and its restoration
    resume.py        whether a resume continues the same run
    run_dir.py       the files of the run directory and its lock

The speed levers (``--step-kernels``, ``--cuda-graph``: :mod:`alexnet.speed`) are imported only by
a run that asks for them.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from alexnet import __version__
from alexnet.config import TrainConfig
from alexnet.data import Store, open_store
from alexnet.data.augment import device_batches
from alexnet.data.loader import AUTO_LOADER_THREADS, Loader, loader_threads
from alexnet.display import on_terminal
from alexnet.errors import UserError
from alexnet.evaluate import Member, evaluate, top5_is_informative
from alexnet.faults import armed
from alexnet.runtime import Runtime, resolve_runtime
from alexnet.small_data import describe as describe_small_data
from alexnet.training.layout import DataParallel, join
from alexnet.training.recipe import (RunInputs, apply_epoch_settings, build_augment, build_model, build_optimizer,
                                     check_data, data_info, epoch_settings, model_args, read_parent, run_inputs,
                                     schedule_notes, store_identity)
from alexnet.training.resume import check_resume
from alexnet.training.run_dir import RunDir
from alexnet.training.state import Position, RunState
from alexnet.training.step import LossWatch, Step, sync_interval

Log = Callable[[str], None]


@dataclass
class Run:
    """What the parts of the loop share, built once by :func:`train`."""

    config: TrainConfig
    layout: DataParallel
    rt: Runtime
    files: RunDir
    state: RunState
    header: dict  # model_args, data and config: what every checkpoint says about the network
    log: Log
    show_progress: bool
    step: Step  # one training step, from a batch to the update
    watch: LossWatch | None = None  # set when the epoch length is known
    stop_requested: Callable[[], bool] | None = None  # asked at each synced step (e.g. SIGTERM arrived)

    def save_last(self) -> None:
        """Checkpoint the run state into last.pt (collective)."""
        self.files.save(self.files.last, {**self.header, **self.state.checkpoint(
            self.layout, self.config.batch_size_per_device)})

    def asked_to_stop(self) -> bool:
        """Whether any rank was asked to stop (collective when ``stop_requested`` is given)."""
        if self.stop_requested is None:
            return False
        return bool(self.layout.any_rank(torch.tensor(bool(self.stop_requested()), device=self.rt.device)))


class Stopped(Exception):
    """The run stopped when asked (``stop_requested``), after writing a checkpoint to resume from."""

    def __init__(self, where: str, checkpoint: Path) -> None:
        super().__init__(f"stopped at {where}; {checkpoint} holds it: add --resume to go on")
        self.where, self.checkpoint = where, checkpoint


def train(config: TrainConfig, data: str | Path, run_dir: str | Path, *, resume: bool = False,
          show_progress: bool = True, log: Log = print, stop_requested: Callable[[], bool] | None = None) -> list[dict]:
    """Train with ``config`` on the prepared store ``data`` into ``run_dir``; returns every epoch's metrics.

    ``stop_requested`` is asked at every step that reads the device (each step on a CPU, every
    ``nonfinite_check_every_steps`` on a GPU) and after each epoch; when it says so on any rank,
    the run writes last.pt and raises :class:`Stopped` (the CLI asks it on SIGTERM)."""
    _check_arguments(config, data, run_dir, resume, log, stop_requested)
    store = open_store(data, hold=True)  # read under a shared lock: prepare --force cannot replace it meanwhile
    layout = join(config.device, config.tower_parallel, config.collective_timeout_minutes)
    # every rank the same data and settings before rank 0 makes the run folder; what may differ by
    # machine: its paths, devices and threads, and TensorBoard (which rank 0 alone writes)
    layout.check_same_run(store, {k: v for k, v in config.to_dict().items() if k not in PER_PROCESS_KEYS})
    check_data(config, store, layout.groups.replicas)
    if asks_for_speed(config):
        from alexnet.speed import levers

        levers.check(config, model_args(config, store), layout.device, layout.proc.world_size)
    parent = read_parent(config.init_from, config) if config.init_from and not resume else None
    inputs = run_inputs(config, store, parent) if parent is not None else None  # refused here, before the folder
    if config.tensorboard and layout.is_main:
        from alexnet.tensorboard import summary_writer_class

        summary_writer_class()  # the extra is there, or one line now, before the run directory is touched
    log = log if layout.is_main else _silent  # rank 0 speaks for the run; what it logs is reduced over ranks
    with RunDir(run_dir, owner=layout.is_main, log=log) as files, closing(store):
        saved = files.checkpoint_to_resume(resume)
        files.record(f"alexnet {__version__}: {'resume' if resume else 'new run'} on {store.path}")
        try:
            return _train(config, store, layout, files, saved, files.tee(log), show_progress, parent, inputs,
                          stop_requested)
        except BaseException as e:
            files.record(_ending(e))
            raise


def _ending(e: BaseException) -> str:
    """How a run that raised ``e`` ended, for log.txt."""
    if isinstance(e, Stopped):
        return str(e)
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"failed: {first}" if isinstance(e, UserError) else f"failed: {type(e).__name__}: {first}"


def _train(config: TrainConfig, store: Store, layout: DataParallel, files: RunDir, saved: dict | None, log: Log,
           show_progress: bool, parent: dict | None, inputs: RunInputs | None,
           stop_requested: Callable[[], bool] | None) -> list[dict]:
    """train() once the run directory is held: start or resume, then the epochs."""
    run = start(config, store, layout, files, saved, log, show_progress, parent, inputs)
    run.stop_requested = stop_requested
    done = run.state.pos.epoch
    if done >= config.epochs:  # nothing to train: the run directory is left as it is
        log(f"{files.dir} has finished {done} epoch{'s' * (done != 1)}; pass --epochs N with N > {done} to go on")
        return files.kept_metrics(done)
    metrics = files.start(config, run.state.pos.epoch)
    threads = loader_threads(config.loader_workers, store.encoding, layout.device,
                             int(os.environ.get("LOCAL_WORLD_SIZE", layout.proc.world_size)))
    train_loader = layout.loader(store, "train", config.batch_size_per_device, train=True, seed=config.seed,
                                 workers=threads, shuffle_window=config.shuffle_window_images)
    val_loader = layout.loader(store, "val", config.batch_size_per_device, train=False, seed=config.seed,
                               workers=threads)
    if config.loader_workers < 0 and threads != AUTO_LOADER_THREADS:
        log(f"{threads} loader threads decode this JPEG store (--loader-workers N to choose)")
    augment, centre = build_augment(config, store, run.rt.device, run.header["data"]["mean_image"])
    val_member = Member(run.state.model, centre, list(store.classes))
    steps = min(len(train_loader), config.max_steps_per_epoch or len(train_loader))
    run.watch = LossWatch(store.num_classes, patience_steps=min(max(2 * steps, 100), 2000), config=config)
    first, started = run.state.pos.epoch, time.perf_counter()
    for epoch in range(run.state.pos.epoch, config.epochs):
        apply_epoch_settings(epoch_settings(config, epoch), run.state.optimizer, augment)  # colour noise, frozen layers
        train_loader.set_epoch(epoch, start_step=run.state.pos.step_in_epoch)
        batches = device_batches(train_loader, augment, run.state.generator, run.rt.device, run.rt.channels_last)
        seconds, images = train_one_epoch(run, batches, epoch, steps)
        val = validate(val_member, val_loader, run)
        left = _time_left(config.epochs - epoch - 1, (time.perf_counter() - started) / (epoch + 1 - first))
        metrics.append(end_epoch(run, epoch, seconds, images, val, metrics, left,
                                 skipped=train_loader.epoch_skipped + val_loader.epoch_skipped))
        if epoch + 1 < config.epochs and run.asked_to_stop():  # end_epoch has just written last.pt
            raise Stopped(f"the end of epoch {epoch + 1}", files.last)
    memorised = run.watch.memorised(metrics, len(val_loader.split))
    if memorised:
        log(memorised)
    skipped = sum(m.get("skipped_images", 0) for m in metrics)
    files.record(f"finished: {config.epochs} epoch{'s' * (config.epochs != 1)}"
                 + (f"; {skipped} damaged images skipped (counted per epoch in metrics.jsonl)" if skipped else ""))
    return metrics


def asks_for_speed(config: TrainConfig) -> bool:
    """Whether a run takes any of the speed levers of :mod:`alexnet.speed` (imported only then)."""
    return bool(config.step_kernels or config.cuda_graph)


PER_PROCESS_KEYS = ("init_from", "device", "cpu_threads", "loader_workers", "tensorboard")


def _check_arguments(config, data, run_dir, resume, log, stop_requested) -> None:
    """train()'s arguments, of the types it takes (a script's mistake, in one line)."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train takes a TrainConfig (alexnet.config.TrainConfig(...)), got {type(config).__name__}")
    for name, path in (("data", data), ("run_dir", run_dir)):
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise TypeError(f"train's {name} is a folder path (str or Path), got {path!r}")
    if not isinstance(resume, bool):
        raise TypeError(f"train's resume is True or False, got {resume!r}")
    if not callable(log):
        raise TypeError(f"train's log is a function, got {log!r}")
    if stop_requested is not None and not callable(stop_requested):
        raise TypeError(f"train's stop_requested is a function, got {stop_requested!r}")


def start(config: TrainConfig, store: Store, layout: DataParallel, files: RunDir, saved: dict | None, log: Log,
          show_progress: bool, parent: dict | None = None, inputs: RunInputs | None = None) -> Run:
    """The network, optimizer, schedule and random streams of a new run, or of ``saved`` resumed
    (``parent`` and its :func:`run_inputs`: what a new run fine-tunes from)."""
    rt = resolve_runtime(config, layout.device)
    if saved is not None:  # refuse another recipe before anything is built or written
        notes = check_resume(saved, config, layout.info(config.batch_size_per_device), store_identity(store),
                             str(files.last))
    if saved is None:
        if config.recipe == "small":
            log(describe_small_data(config, len(store.split("train")), store.image_size))
        for note in schedule_notes(config):
            log(note)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    single = build_model(config, store, new_run=saved is None, log=log, parent=parent)
    log(_network_line(single, config, store, rt, layout))
    model = layout.place(single, rt.memory_format)
    if asks_for_speed(config):
        from alexnet.speed import levers

        levers.use_step_kernels(model, config, log)
    optimizer, schedule = build_optimizer(config, model)
    generator = torch.Generator(rt.device)
    layout.seed(config.seed, generator)
    state = RunState(model, optimizer, schedule, generator, Position())
    if saved is not None:
        keep_lrs = config.lr == saved["config"]["lr"]
        state.restore(saved, layout, seed=config.seed, batch_size_per_device=config.batch_size_per_device,
                      keep_lrs=keep_lrs)
        pos = state.pos
        if pos.epoch < config.epochs:
            log(f"resuming {files.dir} at epoch {pos.epoch + 1}, step {pos.step_in_epoch} (global step {pos.global_step})")
        for note in notes:
            log(note)
        if not keep_lrs and pos.epoch < config.epochs:  # a hand-made step of the schedule, as the paper's authors took
            log(f"learning rate {config.lr:g} from --lr replaces the checkpoint's {saved['lrs'][0]:g} from here on")
    inputs = run_inputs(config, store, saved=saved) if saved is not None else inputs or run_inputs(config, store)
    header = dict(model_args=model_args(config, store), data=data_info(store, inputs), config=config.to_dict())
    run = Run(config, layout, rt, files, state, header, log, show_progress, step=None)
    run.step = Step(layout.step_model(model, config.compile, config.compile_mode), optimizer, rt, config.on_nonfinite,
                    layout.any_rank, keeps=lambda: _what_is_kept(run))
    if asks_for_speed(config):
        levers.speed_up(run.step, model, config)
    return run


def _network_line(model: nn.Module, config: TrainConfig, store: Store, rt: Runtime, layout: DataParallel) -> str:
    """What is trained where: the network's size, its inputs and classes, the device and precision."""
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    size = f"{millions:.1f}M" if millions >= 0.1 else f"{millions * 1e3:.1f}k"
    crops = f"{config.crop_size}x{config.crop_size}x{store.channels}"
    where = f"{rt.precision} on {rt.device.type}"
    procs = layout.proc.world_size
    if procs > 1:
        where += (f", {procs} processes ({layout.groups.replicas} replicas of {layout.towers_per_replica} "
                  f"tower{'s' * (layout.towers_per_replica > 1)})")
    return f"network: {size} parameters, {crops} crops, {store.num_classes} classes; {where}"


def train_one_epoch(run: Run, batches, epoch: int, steps: int) -> tuple[float, int]:
    """Section 5's update over one epoch, from where the run stands in it: each batch is one
    :class:`~alexnet.training.step.Step`; returns the epoch's seconds and images."""
    config, pos, step = run.config, run.state.pos, run.step
    run.state.model.train()
    step.start_epoch()  # the epoch's learning rate and frozen layers are set
    sync_every = sync_interval(config.nonfinite_check_every_steps, run.rt.device, config.on_nonfinite)
    every, kill, shown = config.checkpoint_every_steps, armed("step"), EpochProgress(run, epoch, steps)
    for images, labels in batches:
        if pos.step_in_epoch >= steps:
            break
        pos.step_in_epoch, pos.global_step = pos.step_in_epoch + 1, pos.global_step + 1
        save_now = bool(every) and pos.global_step % every == 0 and pos.step_in_epoch < steps
        synced = pos.step_in_epoch % sync_every == 0 or pos.step_in_epoch == steps or save_now

        def where() -> str:
            return f"epoch {epoch + 1}, step {pos.step_in_epoch} (global step {pos.global_step})"

        if not step(images, labels, read=synced, where=where):
            pos.skipped_steps += 1
            shown.say(f"warning: non-finite loss or gradient at epoch {epoch + 1} step {pos.step_in_epoch}; "
                      "step skipped")
        if kill is not None:
            kill()
        shown.stepped(len(labels) * run.layout.groups.replicas, synced)
        stop = synced and pos.step_in_epoch < steps and run.asked_to_stop()  # the epoch's end asks it itself
        if save_now or stop:
            step.sums.fold_into(pos)
            run.save_last()
        if stop:
            shown.close()
            raise Stopped(where(), run.files.last)
    shown.close()
    step.sums.fold_into(pos)
    return shown.seconds(), shown.images


class EpochProgress:
    """An epoch as a person sees it: the progress bar (when shown) with the loss and images/s,
    lines written above it, and the loss watch (at chance, or diverging) on the mean loss of the read steps."""

    def __init__(self, run: Run, epoch: int, steps: int) -> None:
        self.run, self.steps = run, steps
        self.bar = _progress(run, steps, run.state.pos.step_in_epoch, f"epoch {epoch + 1}/{run.config.epochs}")
        self.losses: list[float] = []
        self.images, self.started = 0, time.perf_counter()

    def stepped(self, images: int, synced: bool) -> None:
        """After a step of ``images`` images (over every replica); ``synced``: its loss may be read."""
        self.images += images
        pos = self.run.state.pos
        if synced:
            self.losses.append(float(self.run.step.loss))
            if pos.step_in_epoch % 10 == 0 or pos.step_in_epoch == self.steps:
                _watch_loss(self.run, sum(self.losses) / len(self.losses), self.bar)
                self.losses = []
        if self.bar is not None:
            self.bar.update(1)
            if synced:
                self.bar.set_postfix(loss=f"{float(self.run.step.loss):.3f}", img_s=f"{self.images / self.seconds():.0f}",
                                     refresh=False)

    def say(self, message: str) -> None:
        _write(self.bar, self.run, message)

    def seconds(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def validate(member: Member, loader: Loader, run: Run) -> dict:
    """Top-1 and top-5 error on the validation split's centre crops, over every replica's shard."""
    from alexnet.inference import progress_bar

    loader.set_epoch(0)
    shown = run.show_progress and run.layout.is_main
    return evaluate([member], loader, precision=run.rt.precision, reduce=run.layout.reduce,
                    progress=lambda batches: progress_bar(batches, len(loader), "validation", shown))


def _time_left(epochs: int, seconds_per_epoch: float) -> str:
    """"; N epochs left, about T" at the pace of this start's epochs (training and validation)."""
    if epochs <= 0:
        return ""
    seconds = epochs * seconds_per_epoch
    about = (f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 90 * 60
             else f"{seconds / 3600:.1f} h")
    return f"; {epochs} epoch{'s' * (epochs != 1)} left, about {about}"


def end_epoch(run: Run, epoch: int, seconds: float, images: int, val: dict, metrics: list[dict],
              left: str = "", skipped: int = 0) -> dict:
    """Schedule, metrics line, checkpoints and curves at the end of an epoch (``left``: what the
    line says of the time still to go; ``skipped``: this rank's damaged images left out of the
    epoch's batches); returns the metrics line."""
    config, state, pos = run.config, run.state, run.state.pos
    totals = run.layout.reduce(torch.tensor([pos.loss_sum, pos.correct, pos.seen, skipped],
                                            dtype=torch.float64)).tolist()
    train_loss, train_err = totals[0] / max(totals[2], 1), 1 - totals[1] / max(totals[2], 1)
    lr = state.optimizer.param_groups[0]["lr"]
    reduced = state.schedule.step(val["top1_error"])
    line = dict(epoch=epoch + 1, train_loss=train_loss, train_top1_error=train_err,
                val_top1_error=val["top1_error"], val_top5_error=val["top5_error"], lr=lr,
                images_per_s=images / max(seconds, 1e-9), epoch_seconds=seconds,
                global_step=pos.global_step, skipped_steps=pos.skipped_steps, skipped_images=int(totals[3]))
    run.files.append_metrics(line)
    top5_says = top5_is_informative(len(run.header["data"]["classes"]))
    top5 = f", top-5 {val['top5_error']:.2%}" if top5_says else ""
    run.log(f"epoch {epoch + 1}: train loss {train_loss:.4f}, train error {train_err:.2%}, "
            f"val top-1 error {val['top1_error']:.2%}{top5}, lr {lr:g}, "
            f"{line['images_per_s']:.0f} images/s" + (f"; lr divided by {1 / config.lr_factor:g}" if reduced else "")
            + (f"; {line['skipped_images']} damaged images skipped" if line["skipped_images"] else "") + left)
    _watch_loss(run, train_loss, None)
    improved = val["top1_error"] < pos.best_val_top1_error
    state.pos = pos.next_epoch(val["top1_error"])
    run.save_last()
    weights = run.layout.to_single(state.model, state.model.state_dict()) if improved or config.tensorboard else {}
    if improved:
        run.files.save(run.files.best, dict(**run.header, model=weights, epoch=epoch + 1, val=val))
    run.files.plot([*metrics, line], weights.get("features.conv1.weight"),
                   towers=run.header["model_args"].get("towers", 1), top5=top5_says)
    return line


def _watch_loss(run: Run, mean_loss: float, bar) -> None:
    """Warn once per run when the loss has sat at ln(classes) for the watch's patience, and once
    when it climbs well above it."""
    pos = run.state.pos
    if not pos.stall_warned and run.watch.observe(pos.global_step, mean_loss):
        pos.stall_warned = True
        _write(bar, run, run.watch.message(pos.global_step))
    if not pos.diverging_warned and run.watch.diverging(mean_loss):
        pos.diverging_warned = True
        _write(bar, run, run.watch.diverging_message(mean_loss))


def _what_is_kept(run: Run) -> str:
    if run.files.last.exists():
        return f"{run.files.last} keeps the last good state"
    return "no checkpoint had been written yet (the first comes at the end of epoch 1, or with --checkpoint-every-steps)"


def _silent(message: str) -> None:
    pass


def _progress(run: Run, total: int, initial: int, desc: str):
    if not (run.show_progress and run.layout.is_main and on_terminal()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def _write(bar, run: Run, message: str) -> None:
    """A line printed above the progress bar (when there is one) and kept in log.txt."""
    if bar is not None:
        bar.write(message)
        run.files.record(message)
    else:
        run.log(message)
