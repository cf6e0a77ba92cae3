"""Any ``torchvision.models`` classifier, adapted to the data set's channels and image size."""
from __future__ import annotations

import torch
from torch import nn

from prune_cli.errors import UsageError
from prune_cli.models.builtin import Normalize
from prune_cli.schema import WIDTH, Bool, Free, Int, Optional_, Text

_PROBE_SIZES = (32, 64, 96, 128, 160, 224, 299)


class TorchvisionModel(nn.Module):
    """Any ``torchvision.models`` classification model, named by ``arch``, adapted to the dataset.

    (``arch``, not ``name``: in every model config ``name`` is the option's own name, here ``torchvision``.)

    - ``num_classes`` is passed to the constructor (a pretrained head is replaced by a fresh Linear).
    - Inputs with other than 3 channels: the first convolution is replaced by one taking that many
      (pretrained weights are summed over the RGB channels for 1-channel inputs).
    - Inputs too small for the architecture: upsampled (bilinear) to ``input_size``; ``input_size: null``
      picks the smallest of 32, 64, 96, 128, 160, 224, 299 that the model accepts, found by a forward pass.
    - ``width`` scales channels for models with a width knob (MobileNet V2/V3 ``width_mult``, MNASNet
      ``alpha``); any other model takes only width 1.
    - ``pretrained: true`` loads torchvision's default weights *after* building (see ``build_for``): the spec
      stays the architecture, so a checkpoint is rebuilt without any download.
    ``options`` are extra constructor keywords (e.g. ``{dropout: 0.2}``).
    """

    config_schema = {"arch": Text(r"[a-z0-9_]+", "a torchvision model name such as resnet18"),
                     "pretrained": Bool(), "input_size": Optional_(Int(8, 4096)), "options": Free(mapping=True), "width": WIDTH}

    WIDTH_KNOBS = {"mobilenet_v2": "width_mult", "mobilenet_v3_small": "width_mult",
                   "mobilenet_v3_large": "width_mult", "mnasnet0_5": "alpha", "mnasnet0_75": "alpha",
                   "mnasnet1_0": "alpha", "mnasnet1_3": "alpha"}

    def __init__(self, input_shape, num_classes, mean, std, arch: str = "resnet18", pretrained: bool = False,
                 input_size=None, options=None, width: float = 1.0):
        super().__init__()
        import torchvision
        self.arch, self.num_classes = str(arch), int(num_classes)
        available = torchvision.models.list_models(module=torchvision.models)
        if self.arch not in available:
            raise UsageError(f"model.arch={self.arch}: not a torchvision classification model (e.g. resnet18, "
                             f"mobilenet_v2, vgg11_bn, efficientnet_b0, vit_b_16)")
        kwargs = dict(options or {})
        if self.arch in ("googlenet", "inception_v3"):
            kwargs.setdefault("aux_logits", False)  # training returns plain logits, like every other model
            kwargs.setdefault("init_weights", False)
        if float(width) != 1.0:
            knob = self.WIDTH_KNOBS.get(self.arch)
            if knob is None:
                raise UsageError(f"model=torchvision arch={self.arch} has no width setting, which "
                                 f"strategy=compress needs; models with one: {', '.join(self.WIDTH_KNOBS)}")
            base = 1.0 if knob == "width_mult" else float(self.arch[len("mnasnet"):].replace("_", "."))
            kwargs[knob] = base * float(width)
        self.normalize = Normalize(mean, std)
        self.net = torchvision.models.get_model(self.arch, weights=None, num_classes=self.num_classes, **kwargs)
        channels, height, width_px = input_shape
        self.first_conv = self._first_conv_name()
        if channels != 3:
            self._set_first_conv(channels)
        self.input_size = int(input_size) if input_size else None
        if self.input_size is None:
            self.input_size = self._smallest_size(channels, height, width_px)
        if pretrained:
            self.load_pretrained()

    def _first_conv_name(self) -> str | None:
        return next((n for n, m in self.net.named_modules() if isinstance(m, nn.Conv2d)), None)

    def _set_first_conv(self, channels: int) -> None:
        if self.first_conv is None:
            raise UsageError(f"model=torchvision arch={self.arch}: no Conv2d to adapt to {channels}-channel inputs")
        parent_name, _, child = self.first_conv.rpartition(".")
        parent = self.net.get_submodule(parent_name) if parent_name else self.net
        old = getattr(parent, child)
        setattr(parent, child, nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                         old.dilation, old.groups, old.bias is not None, old.padding_mode))

    def _fits(self, channels: int, height: int, width: int) -> bool:
        try:
            with torch.no_grad():
                was_training = self.net.training
                self.net.eval()(torch.zeros(1, channels, height, width))
                self.net.train(was_training)
            return True
        except (RuntimeError, ValueError, AssertionError):
            return False

    def _smallest_size(self, channels: int, height: int, width: int) -> int | None:
        """None when the native size works; else the smallest probe size the model accepts."""
        if self._fits(channels, height, width):
            return None
        for size in _PROBE_SIZES:
            if size > min(height, width) and self._fits(channels, size, size):
                return size
        raise ValueError(f"torchvision {self.arch} accepts none of the input sizes {_PROBE_SIZES}; "
                         f"set model.input_size")

    def load_pretrained(self) -> list[str]:
        """torchvision's default weights into the matching tensors; returns the names left at their init."""
        from torchvision.models import get_model_weights
        try:
            weights = get_model_weights(self.arch).DEFAULT
            state = weights.get_state_dict(progress=False)
        except Exception as err:  # URLError/OSError/RuntimeError: offline or no such weights
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise UsageError(f"model=torchvision arch={self.arch} pretrained=true: could not get the weights "
                             f"({type(err).__name__}: {reason[:160]}); put the file under "
                             f"$TORCH_HOME/hub/checkpoints or set model.pretrained=false") from None
        own = self.net.state_dict()
        first = f"{self.first_conv}.weight" if self.first_conv else None
        skipped = []
        for key, value in state.items():
            if key not in own:
                continue
            if key == first and own[key].shape[1] == 1 and value.shape[1] == 3:
                value = value.sum(dim=1, keepdim=True)
            if own[key].shape == value.shape:
                own[key] = value
            else:
                skipped.append(key)
        self.net.load_state_dict(own)
        return skipped

    def forward(self, x):
        x = self.normalize(x)
        if self.input_size is not None:
            x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                                align_corners=False)
        return self.net(x)
