"""torch.hub entry points of this checkout.

    import torch
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local")             # the paper's network
    model = torch.hub.load("path/to/alexnet", "alexnet", source="local", towers=1, lrn=False)
    model = torch.hub.load("path/to/alexnet", "torchvision_alexnet", source="local", weights="alexnet-owt.pth")
    model = torch.hub.load("path/to/alexnet", "trained", source="local", path="runs/mine/best.pt")

No weights ship with the code and nothing is downloaded: a trained network comes from a checkpoint
or an ``alexnet export`` folder on disk.
"""

dependencies = ["torch"]


def alexnet(num_classes: int = 1000, **kwargs):
    """The paper's AlexNet (two towers, LRN, overlapping pooling, dropout 0.5), randomly initialised
    as in section 5. Keyword arguments are :class:`alexnet.AlexNet`'s: ``towers``, ``lrn``,
    ``lrn_convention``, ``overlapping_pool``, ``activation``, ``dropout``, ``in_channels``,
    ``input_size``, ``width``, ``stem``, ..."""
    from alexnet.model import AlexNet

    if kwargs.pop("pretrained", False):
        raise ValueError("no pretrained weights ship with this code; use the 'trained' entry with a checkpoint you trained")
    return AlexNet(num_classes, **kwargs)


def torchvision_alexnet(num_classes: int = 1000, weights: str | None = None, **kwargs):
    """torchvision's single-tower AlexNet layout (61,100,840 parameters at 1000 classes) under this
    package's layer names. ``weights``: a file holding torchvision's AlexNet state dict (such as
    ``alexnet-owt-*.pth``), loaded as is: the network then expects torchvision's input,
    ``(x / 255 - mean) / std`` per channel with ImageNet's mean and std."""
    from alexnet.checkpoint import read_torch_file
    from alexnet.torchvision_alexnet import TorchvisionAlexNet, from_torchvision_state_dict

    model = TorchvisionAlexNet(num_classes, **kwargs)
    if weights is not None:
        state = read_torch_file(weights, expect="torchvision's AlexNet weights (a .pth state dict)", legacy=True)
        model.load_state_dict(from_torchvision_state_dict(state))
    return model


def trained(path: str):
    """A network trained with this package, in eval mode on the CPU, from a checkpoint file, a run
    folder or a safetensors export folder. Its preprocessing (mean image, crop, input scale) is in
    the checkpoint or the export's alexnet.json; ``alexnet predict`` applies it."""
    from alexnet import checkpoint
    from alexnet.export import load_payload
    from alexnet.model import build_model

    payload = load_payload(path)
    model = build_model(payload["model_args"])
    checkpoint.load_model_state(model, payload["model"], str(path))
    return model.eval()
