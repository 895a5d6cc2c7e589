"""What ``model.compile`` buys: backbone step time eager vs torch.compile (inductor), and its one-off cost.

    python benchmarks/compile_step.py --backbone tiny --batch 64
    python benchmarks/compile_step.py --backbone r50 --batch 128 --device cuda --amp bf16

A step is what the trainer runs for the backbone: forward under autocast, backward of a loss on
the embeddings, SGD step (the Partial-FC classifier is not compiled, so it is left out). Reports the
first compiled step (compilation included), the median step time over ``--steps`` after
``--warmup`` for both modes, and the largest difference between eager and compiled embeddings.
Eager and compiled steps alternate, so that a machine shared with other work slows both alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from partialfc.models import create_model
from partialfc.models.precision import autocast_dtype



class BackboneStep:
    """One training step of ``model`` on a fixed batch, timed."""

    def __init__(self, model: nn.Module, images: torch.Tensor, amp: torch.dtype | None) -> None:
        self.model, self.images, self.amp = model, images, amp
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def __call__(self) -> float:
        start = time.perf_counter()
        with torch.autocast(self.images.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            embeddings = self.model(self.images)
        embeddings.float().square().mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.images.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backbone", default="tiny", help="registry name of the backbone")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--embedding-size", type=int, default=128, help="D")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (after compilation)")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    eager = create_model(args.backbone, embedding_size=args.embedding_size).to(device)
    compiled = copy.deepcopy(eager)
    images = torch.randn(args.batch, 3, *eager.input_config.size, device=device)
    with torch.no_grad():
        reference = eager.eval()(images)
        compiled.compile()
        difference = float((compiled.eval()(images) - reference).abs().max())
    eager.train(), compiled.train()

    steps = {name: BackboneStep(model, images, autocast_dtype(args.amp)) for name, model in (("eager", eager), ("compiled", compiled))}
    first = steps["compiled"]()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(args.warmup + args.steps):
        for name, step in steps.items():
            elapsed = step()
            if index >= args.warmup:
                seconds[name].append(elapsed)
    results = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"{args.backbone} batch {args.batch} on {device} (amp {args.amp}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"  first compiled training step (compilation): {first:.1f} s")
    for name, seconds in results.items():
        print(f"  {name:9s} step {seconds * 1e3:8.1f} ms  {args.batch / seconds:8.0f} images/s")
    print(f"  speed-up {results['eager'] / results['compiled']:.2f}x; "
          f"max |eager - compiled| embedding {difference:.2e}")


if __name__ == "__main__":
    main()
