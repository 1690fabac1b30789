"""torch.hub entry points of this checkout.

    import torch
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local")             # the paper's network
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local", towers=1, lrn=False)
    model = torch.hub.load("path/to/alexnet", "torchvision_alexnet", source="local", weights="alexnet-owt.pth")
    model = torch.hub.load("path/to/alexnet", "trained", source="local", path="runs/mine/best.pt")

``path/to/alexnet`` is a checkout of this repository: this file is not part of the installed
package. No weights ship with the code and nothing is downloaded: a trained network comes from a checkpoint
or an ``alexnet export`` folder on disk. Wrong arguments end in one line (``alexnet.errors.UserError``
or ``ValueError``) saying what to pass instead.
"""

# What these entries import; torch.hub names the missing ones before anything is built.
dependencies = ["torch", "numpy", "safetensors"]

NO_DOWNLOADS = ("no pretrained weights ship with this code and nothing is downloaded; use the 'trained' entry with a "
                "checkpoint or export folder you made, or 'torchvision_alexnet' with weights='alexnet-owt-....pth'")


def _classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a whole number of at least 1, got {num_classes!r}")
    return num_classes


def alexnet(num_classes: int = 1000, **kwargs):
    """The paper's AlexNet (two towers, LRN, overlapping pooling, dropout 0.5), randomly initialised
    as in section 5. Keyword arguments are :class:`alexnet.AlexNet`'s: ``towers``, ``lrn``,
    ``lrn_convention``, ``overlapping_pool``, ``activation``, ``dropout``, ``in_channels``,
    ``input_size``, ``width``, ``stem``, ..."""
    import inspect

    from alexnet.model import AlexNet

    if kwargs.pop("pretrained", False) or kwargs.pop("weights", None) is not None:
        raise ValueError(NO_DOWNLOADS)
    known = set(inspect.signature(AlexNet).parameters) - {"num_classes"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"AlexNet takes no argument {unknown[0]!r}; it takes num_classes, {', '.join(sorted(known))}")
    return AlexNet(_classes(num_classes), **kwargs)


def torchvision_alexnet(num_classes: int | None = None, weights: str | None = None, **kwargs):
    """torchvision's single-tower AlexNet layout (61,100,840 parameters at 1000 classes) under this
    package's layer names. ``weights``: a file holding torchvision's AlexNet state dict (such as
    ``alexnet-owt-*.pth``, or the same saved as safetensors), loaded as is: the network then expects torchvision's input,
    ``(x / 255 - mean) / std`` per channel with ImageNet's mean and std. ``num_classes``: 1000,
    or with ``weights`` the outputs of the file's last layer (another number is refused)."""
    import inspect

    from alexnet.errors import UserError
    from alexnet.torchvision_alexnet import TorchvisionAlexNet, from_torchvision_state_dict, read_weights

    if kwargs.pop("pretrained", False):
        raise ValueError(NO_DOWNLOADS)
    known = set(inspect.signature(TorchvisionAlexNet).parameters) - {"num_classes"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"torchvision_alexnet takes no argument {unknown[0]!r}; it takes num_classes, weights, "
                         f"{', '.join(sorted(known))} (the paper's network and its switches: the 'alexnet' entry)")
    if weights is None:
        return TorchvisionAlexNet(_classes(1000 if num_classes is None else num_classes), **kwargs)
    state = read_weights(weights)
    if isinstance(state, dict) and "model_args" in state:
        raise UserError(f"{weights} is a checkpoint of this package, not torchvision's weights; load it with the "
                        "'trained' entry: torch.hub.load(..., 'trained', path=...)")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise UserError(f"{weights} does not hold a state dict (a mapping of names to tensors)")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        ours = from_torchvision_state_dict(state)
    except KeyError as e:
        raise UserError(f"{weights} is not torchvision's AlexNet: {e.args[0]}") from None
    fc8 = ours["classifier.fc8.weight"]
    outputs = int(fc8.shape[0]) if fc8.ndim == 2 else 0
    if num_classes is not None and _classes(num_classes) != outputs:
        raise ValueError(f"{weights} has {outputs} outputs in its last layer, not num_classes={num_classes}; "
                         "leave num_classes out, or fine-tune for new classes with 'alexnet train --init-from'")
    model = TorchvisionAlexNet(max(outputs, 1), **kwargs)
    expected = model.state_dict()
    wrong = next((k for k, v in ours.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)), None)
    if wrong is not None:
        raise UserError(f"{weights} has torchvision's AlexNet keys but {wrong} is {tuple(ours[wrong].shape)}, not "
                        f"{tuple(expected[wrong].shape)}; only the standard layout (64-192-384-256-256, fc 4096) loads")
    model.load_state_dict(ours)
    return model


def trained(path: str):
    """A network trained with this package, in eval mode on the CPU, from a checkpoint file, a run
    folder or a safetensors export folder. Its preprocessing (mean image, crop, input scale) is in
    the checkpoint or the export's alexnet.json; ``alexnet predict`` applies it."""
    from alexnet.trained import build_trained, load

    return build_trained(load(path))
