"""What ``model.compile`` buys: training step time eager vs torch.compile (inductor), and its one-off cost.

    python benchmarks/compile_step.py --backbone tiny --batch 64
    python benchmarks/compile_step.py --backbone r50 --batch 128 --device cuda --amp bf16

A step is the trainer's own :class:`~partialfc.training.train_step.TrainStep` on a fixed batch: backbone
forward under autocast, Partial-FC loss over ``--num-classes`` classes, backward, global gradient
norm, SGD steps of backbone and centres. ``model.compile`` compiles the backbone only, as here; the
Partial-FC head runs eagerly in both. Reports the first compiled step (compilation included), the
median step time over ``--steps`` after ``--warmup`` for both modes, and the largest difference
between eager and compiled embeddings. Eager and compiled steps alternate, so that a machine shared
with other work slows both alike.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch
from torch import nn

from partialfc import CombinedMargin, PartialFC
from partialfc.config import OptimConfig
from partialfc.models import create_model, input_config_of
from partialfc.models.precision import autocast_dtype
from partialfc.training.optimizer import TrainingOptimizer
from partialfc.training.train_step import StepConfig, TrainStep


class TimedStep:
    """The trainer's step of ``model`` with its own Partial FC, on one fixed batch; a call returns its seconds."""

    def __init__(
        self, model: nn.Module, images: torch.Tensor, embedding_size: int, num_classes: int, amp: torch.dtype | None
    ) -> None:
        config = OptimConfig(lr=0.01)
        pfc = PartialFC(
            embedding_size,
            num_classes,
            1.0,
            CombinedMargin(),
            optimizer=config.build_centre_optimizer(),
            device=images.device,
        )
        labels = torch.arange(len(images), device=images.device) % num_classes
        self.step = TrainStep(model, pfc, TrainingOptimizer(config, model, pfc), StepConfig(amp_dtype=amp))
        self.batches = itertools.repeat((images, labels))
        self.numbers = itertools.count(1)

    def __call__(self) -> float:
        start = time.perf_counter()
        self.step(self.batches, lr=0.01, sample_rate=1.0, number=next(self.numbers))
        if self.step.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--backbone", default="tiny", help="registry name of the backbone")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--embedding-size", type=int, default=128, help="D")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the Partial-FC head (all sampled)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (after compilation)")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    eager = create_model(args.backbone, embedding_size=args.embedding_size).to(device)
    compiled = copy.deepcopy(eager)
    images = torch.randn(args.batch, 3, *input_config_of(eager).size, device=device)
    with torch.no_grad():
        reference = eager.eval()(images)
        compiled.compile()
        difference = float((compiled.eval()(images) - reference).abs().max())
    eager.train(), compiled.train()

    steps = {
        name: TimedStep(model, images, args.embedding_size, args.num_classes, autocast_dtype(args.amp))
        for name, model in (("eager", eager), ("compiled", compiled))
    }
    first = steps["compiled"]()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(args.warmup + args.steps):
        for name, step in steps.items():
            elapsed = step()
            if index >= args.warmup:
                seconds[name].append(elapsed)
    results = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        f"{args.backbone} batch {args.batch}, {args.num_classes} classes on {device} (amp {args.amp}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    print(f"  first compiled training step (compilation): {first:.1f} s")
    for name, median in results.items():
        print(f"  {name:9s} step {median * 1e3:8.1f} ms  {args.batch / median:8.0f} images/s")
    print(
        f"  speed-up {results['eager'] / results['compiled']:.2f}x; max |eager - compiled| embedding {difference:.2e}"
    )


if __name__ == "__main__":
    main()
