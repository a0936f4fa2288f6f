"""DeepPCB's defect classes: the one list the model, the data reader and the synthetic boards share.

This module imports nothing (no TensorFlow, no numpy), so code that must stay light, such as
:mod:`training.synth` and the test suite's TensorFlow-free parts, can use the list too. The
service itself reads the class list from the model card, which ``training.export`` writes from
this one.
"""

from __future__ import annotations

__all__ = ["CLASS_NAMES"]

#: DeepPCB's six defect types, in the order of their 1-based annotation codes: type ``k`` is
#: ``CLASS_NAMES[k - 1]``, and the model's output channel ``k`` (0 = background) is that class.
CLASS_NAMES: tuple[str, ...] = ("open", "short", "mousebite", "spur", "spurious_copper", "pin_hole")
