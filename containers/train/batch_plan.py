"""How many packed rows a micro-batch holds on this GPU: what per_device_batch_size=0 (auto) resolves to.

Four rows of max_seq_length tokens per optimizer step is the default batch. A GPU that holds all four at once trains
fastest (7B on an H100: 1.8x the tokens/s of one row x four micro-batches); a smaller one gets two rows x two
micro-batches, or gradient checkpointing, before one row per micro-batch. The estimate is linear in the model's
shape, fitted to bench/train_gpu.py's 7B measurements on an H100 (seq 2048, LoRA r=16 on all linear layers, Liger,
torch_varlen) and rounded up:
- without checkpointing, a token's activations take ~7.65 bytes per layer per unit of (hidden + intermediate) width
  (4 rows of 2048: a 48.6 GiB peak over 13.5 GiB of bf16 weights; the estimate says 51.0);
- with checkpointing, 2 bytes per layer per hidden unit (the saved layer inputs) plus one layer's activations
  (QLoRA, 4 rows: a 7.7 GiB peak with about 4 GiB of 4-bit weights; the estimate says 8.7).
Memory figures are GiB, as torch.cuda.max_memory_allocated reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

ROWS_PER_STEP = 4
ACTIVATION_BYTES = 8.0  # per token, per layer, per unit of (hidden + intermediate) width
CHECKPOINT_BYTES = 2.0  # per token, per layer, per hidden unit: one bf16 layer input kept per layer
# LoRA weights, their gradients and AdamW state, TRL's chunked LM head, the allocator's slack; and a share of the GPU
# that the CUDA context and other processes hold.
RESERVE_BYTES = 1.5 * 2**30
USABLE_FRACTION = 0.9
GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    weight_bytes: int  # as loaded (4-bit weights count their packed bytes)


@dataclass(frozen=True)
class BatchPlan:
    per_device_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    estimated_peak_gib: float | None
    gpu_memory_gib: float | None

    def describe(self) -> str:
        batch = (
            f"{self.per_device_batch_size} row(s) x {self.gradient_accumulation_steps} micro-batch(es), "
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}"
        )
        if self.estimated_peak_gib is None or self.gpu_memory_gib is None:
            return batch
        fits = "" if self.estimated_peak_gib <= self.gpu_memory_gib * USABLE_FRACTION else " (it may not fit)"
        peak, memory = self.estimated_peak_gib, self.gpu_memory_gib
        return f"{batch}: estimated peak {peak:.1f} GiB of the GPU's {memory:.1f} GiB{fits}"


def estimated_peak_bytes(shape: ModelShape, rows: int, seq_len: int, checkpointing: bool) -> float:
    tokens = rows * seq_len
    layer_bytes = ACTIVATION_BYTES * (shape.hidden + shape.intermediate)
    if checkpointing:
        activations = tokens * (CHECKPOINT_BYTES * shape.hidden * shape.layers + layer_bytes)
    else:
        activations = tokens * layer_bytes * shape.layers
    return shape.weight_bytes + activations + RESERVE_BYTES


def plan(
    *,
    per_device_batch_size: int,
    gradient_accumulation_steps: int,
    gradient_checkpointing: str,
    qlora: bool,
    seq_len: int,
    shape: ModelShape | None,
    gpu_memory_bytes: int | None,
) -> BatchPlan:
    """Resolve 0 (auto) batch sizes and gradient_checkpointing=auto. Explicit values are kept; auto checkpointing is
    on with QLoRA, and also when the estimate says the batch does not fit without it. On a CPU (no GPU memory to fit)
    auto means 4 rows x 1 micro-batch."""
    if gradient_checkpointing == "auto":
        checkpointing_options = [True] if qlora else [False, True]
    else:
        checkpointing_options = [gradient_checkpointing == "true"]
    rows_options = [per_device_batch_size] if per_device_batch_size > 0 else [ROWS_PER_STEP, 2, 1]
    # Fastest first: all rows at once, then half, then recomputation (~0.7x), then one row per micro-batch (~0.55x).
    several, single = [r for r in rows_options if r > 1], [r for r in rows_options if r == 1]
    order = [(r, False) for r in several] + [(r, True) for r in several] + [(r, False) for r in single]
    candidates = [c for c in [*order, *((r, True) for r in single)] if c[1] in checkpointing_options]
    if shape is None or gpu_memory_bytes is None:
        chosen = candidates[0]
    else:
        budget = gpu_memory_bytes * USABLE_FRACTION
        fitting = [c for c in candidates if estimated_peak_bytes(shape, c[0], seq_len, c[1]) <= budget]
        # Nothing fits: the most frugal choice, and describe() says it may not fit.
        chosen = fitting[0] if fitting else min(candidates, key=lambda c: (c[0], not c[1]))
    rows, checkpointing = chosen
    accumulation = gradient_accumulation_steps or max(1, ROWS_PER_STEP // rows)
    peak = None if shape is None else estimated_peak_bytes(shape, rows, seq_len, checkpointing) / GIB
    memory = None if gpu_memory_bytes is None else gpu_memory_bytes / GIB
    return BatchPlan(rows, accumulation, checkpointing, peak, memory)
