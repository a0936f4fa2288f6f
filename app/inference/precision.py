"""Which precision a model runs in: ``PCB_PRECISION=auto`` resolved in one place.

``auto`` picks the fast precision of the hardware (bfloat16 on CPUs with AVX512_BF16 or AMX,
mixed float16 on a GPU), but only for a model whose card records accuracy parity for it:
``precision_parity.<precision>.delta_map`` within :data:`PARITY_TOLERANCE` of float32 on the
held-out boards. Anything else runs in float32. An explicit precision is used as given.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from app.inference.card import ModelCard

#: The precisions a model can run in (``auto`` resolves to one of them).
PRECISIONS = ("float32", "bfloat16", "float16")
#: The largest |mAP(precision) - mAP(float32)| that counts as parity.
PARITY_TOLERANCE = 0.005
#: CPU flags (as /proc/cpuinfo spells them) with native bfloat16 arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo``; empty where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_bfloat16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these flags computes bfloat16 natively (AVX512_BF16 or AMX)."""
    return not BF16_CPU_FLAGS.isdisjoint(flags)


def parity_delta(card: ModelCard, precision: str) -> float | None:
    """The card's recorded mAP delta of ``precision`` against float32, or ``None``."""
    entry = card.precision_parity.get(precision)
    return None if entry is None else entry.delta_map


def has_parity(card: ModelCard, precision: str) -> bool:
    """Whether the card records ``precision`` within :data:`PARITY_TOLERANCE` of float32."""
    if precision == "float32":
        return True
    delta = parity_delta(card, precision)
    return delta is not None and abs(delta) <= PARITY_TOLERANCE


def resolve_precision(
    requested: str, device: str, card: ModelCard, cpu_flags: Iterable[str]
) -> str:
    """The precision a model actually runs in.

    Args:
        requested: ``"auto"`` or one of :data:`PRECISIONS` (returned as given).
        device: ``"cpu"`` or ``"gpu"``, the device in use.
        card: The model's card (its ``precision_parity``).
        cpu_flags: The CPU's flags, e.g. :func:`read_cpu_flags`.

    Returns:
        With ``auto``: ``"float16"`` on a GPU, ``"bfloat16"`` on a CPU with AVX512_BF16/AMX,
        each only where the card records parity for it; ``"float32"`` otherwise.

    Raises:
        ValueError: ``requested`` is not ``auto`` or a known precision.
    """
    if requested in PRECISIONS:
        return requested
    if requested != "auto":
        raise ValueError(
            f"precision must be 'auto' or one of {list(PRECISIONS)}. Received: {requested}"
        )
    if device == "gpu":
        fast = "float16"
    elif cpu_has_bfloat16(cpu_flags):
        fast = "bfloat16"
    else:
        return "float32"
    return fast if has_parity(card, fast) else "float32"
