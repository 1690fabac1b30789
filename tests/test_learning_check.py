"""A scaled-down learning check: the paper's init, both dropout styles and both colour-noise scales.

The small network (3x3 stem, 1/8 width, 28 px crops, raw centred 0-255 pixels as in the paper,
PaperSGD at lr 0.01, batch 16) trains 30 steps on an easy four-class store, under the paper's
init with inverted and paper dropout and the "sqrt" and "fb" colour scales, beside a control
with the demo's fan-in scaled init and 1/64 pixel scale. What it measures is written up in
docs/results.md ("Learning check"); the full-size version is benchmarks/learning_check.py.

The check measures, besides the loss, how much the logits depend on the input at the start:
their standard deviation over images, relative to their mean size. Under the paper's init each
layer's weights (std 0.01) shrink the input's part of the activations while the biases of 1 set
their size, so after seven layers the logits are almost the same for every image and the loss
can only fit the class frequencies: it stays at ln(classes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.data import open_store
from alexnet.data.augment import TrainAugment
from alexnet.model import AlexNet, init_weights_
from alexnet.optim import PaperSGD

pytestmark = pytest.mark.slow  # a learning check: several short trainings

STEPS, BATCH = 30, 16
RUNS = {  # name: init, dropout style, colour scale, input scale
    "control (he, 1/64)": ("he", "paper", "sqrt", 1 / 64),
    "paper init, inverted dropout, sqrt": ("paper", "inverted", "sqrt", 1.0),
    "paper init, paper dropout, sqrt": ("paper", "paper", "sqrt", 1.0),
    "paper init, paper dropout, fb": ("paper", "paper", "fb", 1.0),
    "paper init, inverted dropout, fb": ("paper", "inverted", "fb", 1.0),
}


@pytest.fixture(scope="module")
def store(shared_store):
    return open_store(shared_store(classes=4, per_class=40))


def _run(store, init, style, pca_scale, input_scale):
    """(relative spread of the logits over 32 images at the start, the loss of every step)."""
    train = store.split("train")
    images = torch.from_numpy(np.array(train.images[:]))
    labels = torch.from_numpy(np.array(train.labels[:])).long()
    torch.manual_seed(0)
    model = init_weights_(AlexNet(store.num_classes, stem="small", input_size=28, width=0.125,
                                  in_channels=store.channels, dropout_style=style), init)
    augment = TrainAugment(store.mean_image, store.pca_eigenvalues, store.pca_eigenvectors, crop_size=28,
                           pca_scale=pca_scale, input_scale=input_scale)
    with torch.no_grad():
        logits = model.eval()(augment(images[:32], torch.Generator().manual_seed(1)).contiguous())
    spread = (logits.std(0) / logits.abs().mean()).mean().item()
    model.train()
    optimizer, generator, losses = PaperSGD(model.parameters(), lr=0.01), torch.Generator().manual_seed(0), []
    for _ in range(STEPS):
        pick = torch.randint(0, len(images), (BATCH,), generator=generator)
        loss = F.cross_entropy(model(augment(images[pick], generator).contiguous()), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return spread, losses


def test_scaled_down_learning_check(store, capsys):
    chance = math.log(store.num_classes)
    results = {name: _run(store, *args) for name, args in RUNS.items()}
    with capsys.disabled():
        print(f"\nlearning check, {STEPS} steps of {BATCH}; ln({store.num_classes}) = {chance:.3f}")
        for name, (spread, losses) in results.items():
            print(f"  {name:36s} logit spread {spread:.1e}; mean loss of steps 1-10 {np.mean(losses[:10]):.3f}, "
                  f"21-30 {np.mean(losses[-10:]):.3f}")
    for name, (spread, losses) in results.items():
        assert all(math.isfinite(x) for x in losses), name
    control_spread, control = results["control (he, 1/64)"]
    assert control_spread > 1e-2 and np.mean(control[-10:]) < 0.7 * chance  # the check can see learning
    for name, (spread, losses) in results.items():
        if name.startswith("paper init"):
            assert spread < 1e-4, (name, spread)  # the logits barely depend on the image ...
            assert np.mean(losses[-10:]) > 0.9 * chance, name  # ... and the loss stays at chance
