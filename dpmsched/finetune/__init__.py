"""Huang Phase-2 — tune the denoiser on the selected noise levels — and the alternating loop.
(docs/math.md §3.5 [R]; the paper gives only the idea, every choice below is ours and an option.)

**Phase-2 loss, literal reading (``loss="dsm"``, eq. of §3.5).**  Denoising score matching restricted to the
schedule's noise levels σ*_0 > … > σ*_{N−1} (the ones the solver evaluates), with step weights λ_i:

    L_dsm(θ) = E_{x0,ε} Σ_{i=0}^{N−1} λ_i ‖D_θ(x0 + σ*_i ε_i; σ*_i) − x0‖² / d,      Σ λ_i = 1,

estimated *stratified*: every x0 of the batch is noised at every σ*_i (B·N network rows per iteration).
With uniform λ this is ordinary DSM with σ drawn uniformly from {σ*_i} (tested).

**Step weights λ_i** (:func:`step_weights`, all normalised to sum 1 — Adam is almost scale-free anyway):

* ``"convex"``    λ_i ∝ w_i = σ_N(1/σ_{i+1} − 1/σ_i), the convex weights of §3.1 (how much D_i enters x_N);
* ``"convex-sq"`` λ_i ∝ w_i², the MSE surrogate of the error in x_N = Σ w_i D_i;
* ``"uniform"``   λ_i = 1/N;
* ``"edm"``       λ_i ∝ λ_EDM(σ_i) = (σ²+σ_d²)/(σσ_d)², EDM's loss weight (every term becomes an O(1)
  loss on the network's raw output F).

**Alternative reading (``loss="distill"``, flagged in §3.5).**  Make the few-step solve itself match the
model's own accurate ODE solution: L = E_z ‖Solver_σ*(σ_0 z; θ) − x_ref(z)‖²/d, backpropagating through the
N-step solver; x_ref (:func:`distill_pairs`) comes from the *base* model, computed once
(``distill_teacher="base"``, the default), or from a frozen copy of the current θ, recomputed every round
(``"current"``).  The notebook and the benchmark use "base"; comparing the two is exercise 6 of notebook 04
(a tuned model's own ODE need not stay an accurate target).

**Alternating loop (:func:`alternate`).**  σ ← Phase1(θ) (teacher trajectories of the *current* θ),
θ ← Phase2(θ, σ), R rounds.  The result is tied to its schedule and solver: :func:`save_finetuned` records
both in the checkpoint's config and :func:`load_finetuned` warns when asked for another one.

**Distributed.**  Everything runs on ``device="cpu"|"cuda"|"auto"`` and, under ``torchrun``, data-parallel
through ``torch.distributed`` + ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU).  Every rank draws the
*global* batch from a generator seeded by (seed, iteration) and keeps its contiguous slice, so K processes
with batch B/K each compute the same update as one process with batch B (up to float summation order), and a
resumed run continues the same random stream.  State (model, EMA, Adam, iteration) is checkpointed every M
iterations with atomic writes; ``resume=True`` continues from it.

Layout: ``losses`` (λ_i, DSM, distillation), ``loop`` (configuration, Phase-2, the alternating loop),
``tuned`` (a checkpoint tied to its schedule and solver; evaluation), ``distributed`` (devices, torchrun).
The command line is :mod:`dpmsched.cli.finetune`.  **Default reading: ``distill``** — the literal DSM
reading never improved the few-step samples in our measurements (README, ``benchmarks/finetune.md``:
Euler NFE 5 on digits-edm, FD 244.6 → 259.0 → 258.4 with ``dsm`` vs 244.6 → 76.3 → 36.1 with ``distill``).
"""
from __future__ import annotations

from .distributed import barrier, init_distributed, rank_world, resolve_device
from .loop import PRESETS, Phase2Config, alternate, default_phase1, distill_pairs, phase2, train_base
from .losses import (
                    LOSSES,
                    SIGMA_DATA,
                    WEIGHTS,
                    distill_loss,
                    dsm_loss,
                    edm_effective_weight,
                    edm_loss_weight,
                    step_weights,
)
from .tuned import (
                    ScheduleMismatchWarning,
                    check_schedule,
                    evaluate,
                    few_step_error,
                    load_finetuned,
                    model_samples,
                    save_finetuned,
                    training_data,
                    tuned_for,
)

__all__ = [
    "WEIGHTS", "LOSSES", "SIGMA_DATA", "PRESETS", "Phase2Config", "edm_loss_weight", "edm_effective_weight",
    "step_weights", "dsm_loss", "distill_loss", "distill_pairs", "phase2", "alternate", "default_phase1",
    "resolve_device", "init_distributed", "rank_world", "barrier", "save_finetuned", "load_finetuned", "train_base",
    "check_schedule", "tuned_for", "ScheduleMismatchWarning", "model_samples", "few_step_error", "evaluate",
    "training_data",
]
