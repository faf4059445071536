"""``python -m dpmsched train``: train a model from a YAML config (resumable)."""
from __future__ import annotations

from ..train import load_config, train
from .common import ArgumentParser, positive_int

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """``python -m dpmsched train --config FILE.yaml [--steps N] [--out DIR] [--no-resume] [--quiet]``"""
    p = ArgumentParser(prog="python -m dpmsched train", description=main.__doc__)
    p.add_argument("--config", required=True, help="YAML training config (see data/configs/)")
    p.add_argument("--steps", type=positive_int, default=None, help="override the number of steps")
    p.add_argument("--out", default=None, help="final checkpoint folder (default: data/<name>)")
    p.add_argument("--no-resume", action="store_true", help="ignore a saved training state and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    if a.steps is not None:
        cfg["steps"] = a.steps
    if a.out:
        cfg["out"] = a.out
    res = train(cfg, resume=not a.no_resume, progress=not a.quiet)
    acc = f", test accuracy {res['test_accuracy']:.4f}" if "test_accuracy" in res else ""
    print(f"{cfg['name']}: {res['step']} steps in {res['wall_s']:.0f} s, "
          f"last-100 loss {sum(res['losses'][-100:]) / len(res['losses'][-100:]):.4f}{acc} -> {res['out']}")
    return 0
