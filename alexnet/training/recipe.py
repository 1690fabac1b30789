"""From a recipe (:class:`~alexnet.config.TrainConfig`) and a store to the objects of section 5:
the network, PaperSGD with its parameter groups, the schedule and the augmentation.

Also what a checkpoint records about the model and the data, so that a network can be used
without the store it was trained on (evaluate, predict, export) and a resume can tell whether
it is given the same data.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from alexnet.config import ORIGINAL_RECIPE, TrainConfig
from alexnet.data.augment import EvalPreprocess, TrainAugment
from alexnet.data.loader import full_batches_shard
from alexnet.data.store import MANIFEST, Store
from alexnet.errors import UserError
from alexnet.model import init_weights_
from alexnet.optim import MilestoneSchedule, PaperSGD, PlateauSchedule, parameter_groups
from alexnet.torchvision_alexnet import FOLDED_STD, folded_std
from alexnet.trained import build_network


def check_data(config: TrainConfig, store: Store, replicas: int) -> None:
    """Refuse a store this recipe cannot train on with ``replicas`` replicas, before anything is built."""
    if store.num_classes < 2:
        raise UserError(f"{store.path} has a single class; classification needs at least two")
    if config.crop_size > store.image_size:
        raise UserError(f"--crop-size {config.crop_size} is larger than the prepared images ({store.image_size} px)")
    if "val" not in store.splits:
        raise UserError(f"{store.path} has no validation split, which training needs every epoch; "
                        "prepare it again with a val/ folder or --val-fraction")
    images, global_batch = len(store.split("train")), config.batch_size_per_device * replicas
    if images < global_batch:
        raise UserError(f"the training split has {images} images, fewer than one global batch of {global_batch} "
                        f"({replicas} replica(s) x {config.batch_size_per_device}); lower --batch-size-per-device")
    full_batches_shard(images, config.batch_size_per_device, replicas, config.shuffle_window_images)


def model_args(config: TrainConfig, store: Store) -> dict:
    """Keyword arguments of AlexNet for this recipe and data set (saved in checkpoints; they
    always name ``dropout_style``, which tells them from those of earlier versions); for
    ``arch`` "torchvision", those of :class:`~alexnet.torchvision_alexnet.TorchvisionAlexNet`
    with ``arch`` named (:func:`alexnet.trained.build_network` reads either)."""
    if config.arch == "torchvision":
        return dict(arch="torchvision", num_classes=store.num_classes, dropout=config.dropout,
                    in_channels=store.channels)
    args = dict(
        num_classes=store.num_classes, towers=config.towers, lrn=config.lrn,
        lrn_convention=config.lrn_convention, lrn_before_relu=config.lrn_before_relu,
        overlapping_pool=config.overlapping_pool, activation=config.activation, dropout=config.dropout,
        dropout_style=config.dropout_style,
        in_channels=store.channels, input_size=config.crop_size, width=config.width, stem=config.stem,
    )
    # the newer shape arguments only when used, so that other readers of model_args see the keys they know
    extra = dict(conv_channels=list(config.channels) or None, fc_units=config.fc_units,
                 conv6_channels=config.conv6_channels, cnorm2=config.cnorm2)
    args.update({k: v for k, v in extra.items() if v})
    return args


def store_identity(store: Store) -> str:
    """What the store holds: the digest of its content that prepare recorded (the same for any copy
    of the store, wherever it lies; another for a store rebuilt from other images). A store
    prepared before that digest existed is named by a digest of its manifest instead."""
    return store.manifest.get("content_digest") or hashlib.sha256((store.path / MANIFEST).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class RunInputs:
    """What the run subtracts from its inputs, and the input std its conv1 holds folded (or None)."""

    mean_image: torch.Tensor  # (S, S, C) float32, 0-255 pixel units
    folded_std: tuple[float, ...] | None = None


def run_inputs(config: TrainConfig, store: Store, parent: dict | None = None, saved: dict | None = None) -> RunInputs:
    """The mean image of a run: the store's, or (``mean_image`` "parent") that of the parent
    checkpoint of a new run, or of the run's own checkpoint ``saved`` on a resume.

    A parent's mean image is taken as it is when it has the store's image size, or spread over
    the store's size when it holds one value per channel (an imported torchvision network's
    ImageNet means); another per-pixel mean is refused in one line."""
    if config.mean_image == "store":
        return RunInputs(torch.from_numpy(store.mean_image.copy()))
    if saved is not None:
        return RunInputs(saved["data"]["mean_image"].float().contiguous(), folded_std(saved))
    if parent is None:
        raise ValueError("mean_image 'parent' needs the parent checkpoint")
    mean, size, channels = parent["data"]["mean_image"].float().cpu(), store.image_size, store.channels
    if mean.shape[2] != channels:
        raise UserError(f"--mean-image parent: the parent's mean image has {mean.shape[2]} channel(s), the store's "
                        f"images {channels}; use --mean-image store")
    if tuple(mean.shape[:2]) != (size, size):
        per_channel = mean.reshape(-1, channels)
        if not bool((per_channel == per_channel[0]).all()):
            raise UserError(f"--mean-image parent: the parent's mean image is a per-pixel mean of {mean.shape[0]} px "
                            f"images, the store holds {size} px ones; prepare the data with --image-size "
                            f"{mean.shape[0]}, or use --mean-image store")
        mean = per_channel[0].expand(size, size, channels)
    return RunInputs(mean.contiguous(), folded_std(parent))


def data_info(store: Store, inputs: RunInputs) -> dict:
    """What a checkpoint records about the data: the classes, the image format and what the run
    subtracts from its inputs (:func:`run_inputs`)."""
    info = dict(classes=list(store.classes), image_size=store.image_size, channels=store.channels,
                mean_image=inputs.mean_image, store_identity=store_identity(store))
    if inputs.folded_std:
        info[FOLDED_STD] = list(inputs.folded_std)
    return info


def build_model(config: TrainConfig, store: Store, *, new_run: bool = True, log=print,
                parent: dict | None = None) -> nn.Module:
    """The single-device network with the recipe's init, drawn from the current torch seed; for a
    new run with ``init_from``, every layer that fits is then loaded from that checkpoint
    (``parent``: the one :func:`read_parent` already read, if it did). A recipe that freezes
    every layer is refused (it would update nothing); a new run notes the network flags that
    change nothing in its network (:func:`inert_flags`)."""
    args = model_args(config, store)
    model = init_weights_(build_network(args), config.init)
    layers = list(model.learnable_layers())
    if set(layers) <= set(config.freeze):
        raise UserError(f"--freeze names every layer of the network ({', '.join(layers)}): the run would update "
                        "nothing; leave at least one layer out of --freeze")
    if not config.fc8_bias_zero and config.init != "he":  # the reading of section 5 that gives fc8 fc7's 1
        with torch.no_grad():
            model.classifier.fc8.bias.fill_(1.0)
    if new_run and (inert := inert_flags(config, args)):
        log(f"note: {', '.join(inert)} change{'s' * (len(inert) == 1)} nothing in this network (it is the same "
            "without, given the other flags); recorded in config.json all the same")
    if new_run and config.init_from:
        notes = load_parent(model, parent or read_parent(config.init_from, config), config.init_from, args,
                            config.freeze)
        log(f"fine-tuning from {config.init_from}: {notes}")
    return model


def _flag(name: str, value) -> str:
    """How ``alexnet train`` spells key ``name`` set to ``value``."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"


def _computation(args: dict) -> list[str]:
    """What the network ``args`` describe computes: its layers that do something, in order, each
    with its settings (built on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        net = build_network(args)
    return [repr(m) for m in net.modules()
            if not list(m.children()) and not isinstance(m, nn.Identity) and getattr(m, "p", None) != 0]


def inert_flags(config: TrainConfig, args: dict) -> list[str]:
    """The network flags of ``config`` (off their defaults, and not set so by its ``recipe``) that
    build the same network as their defaults would, given the other flags (``--lrn-convention``
    or ``--lrn-before-relu`` with ``--no-lrn``, say), as the flags are written."""
    if args.get("arch", "alexnet") != "alexnet":
        return []
    defaults, base, inert = TrainConfig(), _computation(args), []
    for name in args:
        value, default = getattr(config, name, None), getattr(defaults, name, None)
        if value is None or value == default or (config.recipe == "original" and ORIGINAL_RECIPE.get(name) == value):
            continue
        try:
            same = _computation({**args, name: default}) == base
        except (TypeError, ValueError):  # the default does not fit the other flags: it matters
            same = False
        if same:
            inert.append(_flag(name, value))
    return inert


def read_parent(path: str, config: TrainConfig | None = None) -> dict:
    """The checkpoint (or run folder, or safetensors export) at ``path``, checked as a parent for
    fine-tuning with ``config``.

    Refused, in one line that gives the flags that fit it: a parent of another architecture than
    ``config.arch`` (torchvision's layout shares layer names and some shapes with the paper's but
    not what its layers compute) and one whose inputs were scaled or centred otherwise than
    ``config``'s (its conv1 would see inputs of another scale).
    """
    from alexnet.trained import load

    try:
        parent = load(path)
    except UserError as e:
        raise UserError(f"--init-from: {e}") from None
    arch, ours = parent["model_args"].get("arch", "alexnet"), config.arch if config is not None else "alexnet"
    theirs_config, inputs = parent.get("config", {}), []  # (key, parent's value, flag) where the inputs differ
    for key in ("input_scale", "subtract_mean") if config is not None else ():
        value = theirs_config.get(key, getattr(config, key))
        if value != getattr(config, key):
            inputs.append((key, value, f"--input-scale {value!r}" if key == "input_scale" else
                           "--subtract-mean" if value else "--no-subtract-mean"))
    if arch != ours:
        flags = " ".join(([] if arch == "alexnet" else [f"--arch {arch}"]) + [flag for _, _, flag in inputs])
        if arch == "torchvision":
            raise UserError(f"--init-from {path} is a network of torchvision's layout, this run builds the paper's "
                            f"network, whose layers compute something else; fine-tune it with {flags}")
        what = "the paper's network" if arch == "alexnet" else f"a network of {arch}'s layout"
        advice = f"leave out --arch {ours}" + (f" and give {flags}" if flags else "")
        raise UserError(f"--init-from {path} is {what}, this run builds {ours}'s layout, whose layers compute "
                        f"something else; {advice}, or start from an 'alexnet import-torchvision' checkpoint")
    if inputs:
        key, value, _ = inputs[0]
        raise UserError(f"--init-from {path} was trained with {key} {value!r}, this run has "
                        f"{getattr(config, key)!r}: its conv1 would see inputs of another scale; "
                        f"give {' '.join(flag for _, _, flag in inputs)} as the parent had it")
    return parent


# Network arguments in which a fine-tuned network may differ from its parent: its sizes (the
# layers are then matched by shape, below) and its dropout rate (a choice of training). Any other
# argument says what a layer computes (its activation, normalisation, pooling, towers, dropout
# style), so a parent that differs in it would hand over weights trained for another function.
FREE_ARGS = ("num_classes", "in_channels", "input_size", "width", "conv_channels", "fc_units", "conv6_channels",
             "dropout")


def _computes_otherwise(parent_args: dict, args: dict) -> list[tuple[str, object, object]]:
    """(argument, the parent's value, this network's) for each argument outside :data:`FREE_ARGS`
    in which the two networks differ, each read with its constructor's default when absent."""
    from alexnet.config import upgrade_network
    from alexnet.trained import ARCHITECTURES

    arch = args.get("arch", "alexnet")
    params = inspect.signature(ARCHITECTURES[arch]).parameters.items()
    defaults = {n: p.default for n, p in params if p.default is not inspect.Parameter.empty}
    theirs = {**defaults, **(upgrade_network(parent_args) if arch == "alexnet" else parent_args)}
    ours = {**defaults, **args}
    return [(k, theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours))
            if k not in FREE_ARGS + ("arch",) and theirs.get(k) != ours.get(k)]


def load_parent(model: nn.Module, parent: dict, path: str, args: dict | None = None, freeze: tuple = ()) -> str:
    """Copy into ``model`` (built from ``args``) every parameter of ``parent`` (from
    :func:`read_parent`, read from ``path``) that has the same name and shape, except fc8's (a new
    task's outputs start afresh: section 6 fine-tuned a net pre-trained on 22k classes to 1000);
    returns a line saying which layers came from it, which were drawn afresh, which of the
    parent's this network has no place for, and which of those drawn afresh ``freeze`` keeps
    random. Refused: a parent whose layers compute otherwise (another activation, LRN, pooling,
    towers or dropout style: :func:`_computes_otherwise`), and layers that fit in part."""
    differ = _computes_otherwise(parent["model_args"], args) if args is not None else []
    if differ:
        said = ", ".join(f"{k} {theirs!r}" for k, theirs, _ in differ)
        raise UserError(f"--init-from {path} was trained with {said}, this run has "
                        f"{', '.join(repr(ours) for _, _, ours in differ)}: its layers would compute something else; "
                        f"give {' '.join(_flag(k, theirs) for k, theirs, _ in differ)} as the parent had it")
    theirs = parent["model"]
    loaded, fresh, shapes = [], [], {}
    own = model.state_dict()
    with torch.no_grad():
        for name, tensor in own.items():
            layer = name.split(".")[-2] if "." in name else name
            source = theirs.get(name)
            if layer != "fc8" and source is not None and source.shape == tensor.shape:
                tensor.copy_(source)
                loaded.append(layer)
            else:
                fresh.append(layer)
                if source is not None:
                    shapes.setdefault(layer, f"{name} is {tuple(source.shape)} there, {tuple(tensor.shape)} here")
    loaded, fresh = list(dict.fromkeys(loaded)), list(dict.fromkeys(fresh))
    if not loaded:
        raise UserError(f"--init-from {path}: no layer of that network fits this one (another architecture, "
                        "channel count or crop size); fine-tune with the parent's model flags")
    partly = sorted(set(loaded) & set(fresh))
    if partly:
        args = parent["model_args"]
        what = (f"a store of its {args.get('in_channels', 3)} channel(s)" if args.get("arch") == "torchvision"
                else "the parent's model flags (--crop-size, --width, ...) on a store of its channel count")
        raise UserError(f"--init-from {path}: layer(s) {', '.join(partly)} fit only in part "
                        f"({'; '.join(shapes[x] for x in partly if x in shapes)}); fine-tune with {what}")
    dropped = list(dict.fromkeys(name.split(".")[-2] for name in theirs if "." in name and name not in own))
    random = [layer for layer in fresh if layer in freeze]
    return (f"loaded {', '.join(loaded)}; drawn afresh {', '.join(fresh) or 'none'}"
            + (f"; dropped the parent's {', '.join(dropped)} (not in this network)" if dropped else "")
            + (f"; {', '.join(random)} frozen as drawn (--freeze): {'they stay' if len(random) > 1 else 'it stays'} "
               "random" if random else ""))


def build_optimizer(config: TrainConfig, model: nn.Module) -> tuple[PaperSGD, PlateauSchedule | MilestoneSchedule]:
    """PaperSGD over the recipe's parameter groups, and the learning-rate schedule."""
    conv1_steps = config.freeze_conv1_last_epochs or config.conv1_lr_tenth_last_epochs
    own_layers = tuple(dict.fromkeys(config.freeze + (("conv1",) if conv1_steps else ())))
    kind = PaperSGD
    if "fused-sgd" in config.step_kernels:  # the same update in one pass (alexnet/speed/fused_sgd.py)
        from alexnet.speed.levers import fused_paper_sgd

        kind = fused_paper_sgd(config)
    optimizer = kind(parameter_groups(model, config.lr, config.weight_decay, config.param_groups, own_layers),
                     lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.schedule == "plateau":
        schedule = PlateauSchedule(optimizer, factor=config.lr_factor, patience_epochs=config.plateau_patience_epochs,
                                   threshold=config.plateau_threshold, max_reductions=config.max_lr_reductions)
    else:
        schedule = MilestoneSchedule(optimizer, config.milestones_epochs, factor=config.lr_factor)
    return optimizer, schedule


def build_augment(config: TrainConfig, store: Store, device: torch.device,
                  mean_image: torch.Tensor | None = None) -> tuple[TrainAugment, EvalPreprocess]:
    """Section 4.1's training augmentation and the validation centre crop, on ``device``; they
    subtract ``mean_image`` (default: the store's, see :func:`run_inputs`)."""
    mean_image = store.mean_image if mean_image is None else mean_image.numpy()
    train = TrainAugment(mean_image, store.pca_eigenvalues, store.pca_eigenvectors, crop_size=config.crop_size,
                         random_crop=config.random_crop, flip=config.flip, pca_lighting_std=config.pca_lighting_std,
                         pca_scale=config.pca_scale, lighting_shrink=config.lighting_shrink,
                         subtract_mean=config.subtract_mean, input_scale=config.input_scale,
                         mean_centre_patch=config.mean_centre_patch,
                         crop_chunk_images=config.crop_chunk_images).to(device)
    val = EvalPreprocess(mean_image, crop_size=config.crop_size, subtract_mean=config.subtract_mean,
                         input_scale=config.input_scale).to(device)
    return train, val


@dataclass(frozen=True)
class EpochSettings:
    """What the recipe changes from epoch to epoch (the released recipe's last epochs)."""

    lighting: bool  # PCA colour noise on
    frozen: tuple[str, ...]  # layers not updated
    slowed: tuple[str, ...] = ()  # layers whose weights learn at a tenth of the lr (frozen ones stay frozen)


SLOWED_LR_SCALE = 0.1  # layer-params-145.cfg's log: conv1's epsW 0.00001 while the others' was 0.0001


def epoch_settings(config: TrainConfig, epoch: int) -> EpochSettings:
    """The settings of epoch ``epoch`` (0-based) of a run of ``config.epochs``: a function of the
    epoch number alone, so that a resumed run applies what the uninterrupted one did."""
    left = config.epochs - epoch  # this epoch and those after it
    frozen = config.freeze + (("conv1",) if left <= config.freeze_conv1_last_epochs and "conv1" not in config.freeze else ())
    return EpochSettings(lighting=left > config.lighting_off_last_epochs, frozen=frozen,
                         slowed=("conv1",) if left <= config.conv1_lr_tenth_last_epochs else ())


def schedule_notes(config: TrainConfig) -> list[str]:
    """Lines saying how the schedule falls in this run: the last-epochs settings count back from
    ``epochs`` (the released recipe's 24 and 19 epochs, of a run 91 long), so a short run spends
    most or all of itself without colour noise or with conv1 slowed or frozen; milestones count
    from the start, so in a run of another length than ``recipe "original"``'s they fall elsewhere
    against its end."""
    notes = []
    for epochs_, flag, what in ((config.lighting_off_last_epochs, "--lighting-off-last-epochs", "without colour noise"),
                                (config.conv1_lr_tenth_last_epochs, "--conv1-lr-tenth-last-epochs",
                                 "with conv1's weights at a tenth of the lr"),
                                (config.freeze_conv1_last_epochs, "--freeze-conv1-last-epochs", "with conv1 frozen")):
        if epochs_ and 2 * epochs_ >= config.epochs:
            part = "all" if epochs_ >= config.epochs else f"the last {epochs_}"
            notes.append(f"note: {flag} {epochs_} counts back from --epochs {config.epochs}: {part} of its epochs "
                         f"train {what}; give {flag} 0 (or a smaller N) for a short run")
    if config.recipe == "original" and config.schedule == "milestones" and config.epochs != ORIGINAL_RECIPE["epochs"]:
        taken = [m for m in config.milestones_epochs if m < config.epochs]
        notes.append(f"note: --recipe original's log is of {ORIGINAL_RECIPE['epochs']} epochs; in --epochs "
                     f"{config.epochs} the lr is divided after epoch(s) {', '.join(map(str, taken)) or 'none'} "
                     "(--milestones-epochs count from the start), and the last-epochs settings count back from "
                     "the end")
    return notes


def apply_epoch_settings(settings: EpochSettings, optimizer: torch.optim.Optimizer, augment: TrainAugment) -> None:
    """Switch the colour noise, and freeze or slow the layers of ``settings`` (PaperSGD skips frozen
    groups and scales a group's lr by its ``lr_scale``; :func:`build_optimizer` gave those layers
    groups of their own). Slowing leaves a layer's biases at their rate, as the released log did."""
    augment.lighting_on = settings.lighting
    for group in optimizer.param_groups:
        group["frozen"] = group.get("layer") in settings.frozen
        slowed = group.get("layer") in settings.slowed and group.get("kind") != "biases"
        group["lr_scale"] = SLOWED_LR_SCALE if slowed else 1.0
