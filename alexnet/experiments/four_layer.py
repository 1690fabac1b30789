"""The four-layer CNN of figure 1 (section 3.1) and the plain training loop that measures it.

"A four-layer convolutional neural network with ReLUs [...] reaches a 25% training error rate on
CIFAR-10 six times faster than an equivalent network with tanh neurons. [...] No regularization of
any kind was employed." :class:`FourLayerNet` is three 5x5 convolutions (32, 32, 64 kernels, each
followed by the activation and 3/2 max-pooling) and a softmax layer: four learnable layers, no
LRN, no dropout, no weight decay, no augmentation. Init N(0, 1/fan_in), biases 0 (LeCun's, the
usual one for tanh, so the comparison does not favour ReLU). :func:`train_four_layer` trains it
with PaperSGD, momentum 0.9 and a constant lr, recording the training error as measured during
training; :mod:`alexnet.experiments.figure1` compares the two activations with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data import Store
from alexnet.data.augment import EvalPreprocess
from alexnet.data.loader import Loader
from alexnet.display import on_terminal
from alexnet.errors import UserError
from alexnet.optim import PaperSGD

FIGURE1_INPUT_SCALE = 1 / 64  # centred 0-255 pixels to about unit size, as the demo recipe
POINTS_PER_EPOCH = 20  # training-error points recorded per epoch, about (figure 1)


class FourLayerNet(nn.Module):
    """Three 5x5 convolutions (32, 32, 64 kernels; pad 2), each with the activation and a 3/2
    max-pool, then a fully-connected softmax layer: the four-layer CNN of figure 1, no LRN or dropout."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, activation: str) -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
        layers, channels = [], in_channels
        side = image_size
        for out in (32, 32, 64):
            layers += [nn.Conv2d(channels, out, 5, padding=2), act(), nn.MaxPool2d(3, 2)]
            channels, side = out, (side - 3) // 2 + 1
        if side < 1:
            raise UserError(f"images of {image_size} px are too small for the four-layer network (at least 15 px)")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * side * side, num_classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.normal_(0.0, m.weight[0].numel() ** -0.5)  # N(0, 1/fan_in)
                    m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def train_four_layer(store: Store, *, activation: str, lr: float, seed: int, epochs: int, batch_size: int = 128,
                     points_every_steps: int | None = None, workers: int = 2, show_progress: bool = False) -> dict:
    """Train :class:`FourLayerNet` and return the training error measured along the way.

    Inputs are the whole stored images, mean-subtracted and scaled by 1/64, in the same seeded
    order for either activation; ``torch.manual_seed(seed)`` makes the initial weights the same.
    Returns ``points`` [{"step", "epoch", "train_error", "train_loss"}], each the mean over the
    ``points_every_steps`` steps since the previous point (default: 1/20 of an epoch; the points
    run across epoch ends so that every one averages as many images), and ``diverged`` (a
    non-finite loss stopped the run)."""
    torch.manual_seed(seed)
    model = FourLayerNet(store.channels, store.num_classes, store.image_size, activation)
    optimizer = PaperSGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    loader = Loader(store.split("train"), batch_size, shuffle=True, seed=seed, drop_last=True, workers=workers)
    preprocess = EvalPreprocess(store.mean_image, crop_size=store.image_size, input_scale=FIGURE1_INPUT_SCALE)
    steps_per_epoch = len(loader)
    every = points_every_steps or max(1, steps_per_epoch // POINTS_PER_EPOCH)
    points, step, diverged = [], 0, False
    wrong = seen = 0
    loss_sum = 0.0
    bar = None
    if show_progress and on_terminal():
        from tqdm import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc=f"{activation} lr {lr:g} seed {seed}", unit="step",
                   leave=False, dynamic_ncols=True)
    model.train()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:
            logits = model(preprocess.center(images))
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            wrong += int((logits.detach().argmax(1) != labels).sum())
            seen += len(labels)
            loss_sum += float(loss.detach()) * len(labels)
            if step % every == 0 or step == epochs * steps_per_epoch:
                points.append(dict(step=step, epoch=step / steps_per_epoch, train_error=wrong / seen,
                                   train_loss=loss_sum / seen))
                wrong = seen = 0
                loss_sum = 0.0
            if bar is not None:
                bar.update(1)
        if diverged:
            break
    if bar is not None:
        bar.close()
    return dict(points=points, steps_per_epoch=steps_per_epoch, diverged=diverged)
