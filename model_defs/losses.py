"""Losses for very imbalanced multi-class segmentation masks."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

_REDUCTIONS = ("per_image", "per_batch")


def _one_hot_like(y_true: Any, y_pred: Any) -> Any:
    """Returns ``y_true`` one-hot encoded to match ``y_pred`` (``(B, H, W, K)``).

    Accepts integer class maps of shape ``(B, H, W)`` or ``(B, H, W, 1)``, or one-hot masks
    already shaped like ``y_pred``.
    """
    num_classes = y_pred.shape[-1]
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == num_classes:
        return ops.cast(y_true, y_pred.dtype)
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.one_hot(ops.cast(y_true, "int32"), num_classes, dtype=y_pred.dtype)


def dice_iou_loss(
    y_true: Any,
    y_pred: Any,
    smooth: float = 1.0,
    dice_weight: float = 0.5,
    iou_weight: float = 0.5,
    cross_entropy_weight: float = 0.0,
    reduction_mode: str = "per_image",
    background_class: int | None = 0,
) -> Any:
    """Combined soft Dice and soft IoU (Jaccard) loss, averaged over the foreground classes.

    For each class ``c`` with soft intersection ``I = sum(t * p)`` and sums ``T = sum(t)``,
    ``P = sum(p)`` (over pixels, and over the batch when ``reduction_mode="per_batch"``):

        dice_c = (2 I + smooth) / (T + P + smooth)
        iou_c  = (I + smooth) / (T + P - I + smooth)
        loss   = mean_c [dice_weight * (1 - dice_c) + iou_weight * (1 - iou_c)]
                 + cross_entropy_weight * categorical_crossentropy

    The background class is left out of the mean: on a PCB it covers >99% of the pixels and
    would otherwise dominate. ``smooth`` keeps an empty mask with an empty prediction at a
    loss of exactly 0 instead of 0/0.

    Args:
        y_true: Integer class map ``(B, H, W)`` / ``(B, H, W, 1)``, or one-hot ``(B, H, W, K)``.
        y_pred: Class probabilities ``(B, H, W, K)`` (after softmax).
        smooth: Smoothing term, >= 0. Use > 0 unless every image has every class.
        dice_weight: Weight of the Dice term, >= 0.
        iou_weight: Weight of the IoU term, >= 0.
        cross_entropy_weight: Weight of an added pixel-wise categorical cross-entropy, >= 0.
        reduction_mode: ``"per_image"`` computes the overlaps per image (each board counts the
            same); ``"per_batch"`` pools all pixels of the batch first.
        background_class: Index of the class left out of the mean, or ``None`` to keep all.

    Returns:
        A tensor of shape ``(B,)``: the loss per image. With ``"per_batch"`` every entry holds
        the batch's value, so that their mean is that value.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_pred = ops.cast(y_pred, "float32")
    t = _one_hot_like(y_true, y_pred)
    if reduction_mode == "per_image":
        axes: tuple[int, ...] = (1, 2)
    elif reduction_mode == "per_batch":
        axes = (0, 1, 2)
    else:
        raise ValueError(
            f"`reduction_mode` must be one of {_REDUCTIONS}. "
            f"Received: reduction_mode={reduction_mode!r}"
        )
    intersection = ops.sum(t * y_pred, axis=axes)
    total = ops.sum(t, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    iou = (intersection + smooth) / (total - intersection + smooth)
    per_class = dice_weight * (1.0 - dice) + iou_weight * (1.0 - iou)
    num_classes = y_pred.shape[-1]
    if background_class is not None:
        keep = [c for c in range(num_classes) if c != background_class]
        per_class = ops.take(per_class, keep, axis=-1)
    loss = ops.mean(per_class, axis=-1)
    batch = ops.shape(y_pred)[0]
    if reduction_mode == "per_batch":
        loss = ops.broadcast_to(loss, (batch,))
    if cross_entropy_weight:
        ce = keras.losses.categorical_crossentropy(t, y_pred)  # (B, H, W)
        loss = loss + cross_entropy_weight * ops.mean(ce, axis=(1, 2))
    return loss


@keras.saving.register_keras_serializable(package="pcb_inspect")
class DiceIoULoss(keras.losses.Loss):
    """Keras ``Loss`` wrapper of :func:`dice_iou_loss`; see there for the formula.

    Args:
        smooth: Smoothing term, >= 0.
        dice_weight: Weight of the Dice term, >= 0.
        iou_weight: Weight of the IoU term, >= 0.
        cross_entropy_weight: Weight of an added categorical cross-entropy, >= 0.
        reduction_mode: ``"per_image"`` or ``"per_batch"``: where the overlaps are summed.
        background_class: Class index excluded from the mean, or ``None``.
        reduction: Keras reduction of the per-image values (default ``"sum_over_batch_size"``).
        name: Name of the loss.
        dtype: Dtype of the loss computation.
    """

    def __init__(
        self,
        smooth: float = 1.0,
        dice_weight: float = 0.5,
        iou_weight: float = 0.5,
        cross_entropy_weight: float = 0.0,
        reduction_mode: str = "per_image",
        background_class: int | None = 0,
        reduction: str = "sum_over_batch_size",
        name: str = "dice_iou_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for arg, value in (
            ("smooth", smooth),
            ("dice_weight", dice_weight),
            ("iou_weight", iou_weight),
            ("cross_entropy_weight", cross_entropy_weight),
        ):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{arg}` must be a number >= 0. Received: {arg}={value!r}")
        if dice_weight + iou_weight + cross_entropy_weight <= 0:
            raise ValueError(
                "At least one of `dice_weight`, `iou_weight`, `cross_entropy_weight` must be > 0. "
                f"Received: dice_weight={dice_weight}, iou_weight={iou_weight}, "
                f"cross_entropy_weight={cross_entropy_weight}"
            )
        if reduction_mode not in _REDUCTIONS:
            raise ValueError(
                f"`reduction_mode` must be one of {_REDUCTIONS}. "
            f"Received: reduction_mode={reduction_mode!r}"
            )
        if background_class is not None and (
            not isinstance(background_class, int) or background_class < 0
        ):
            raise ValueError(
                "`background_class` must be a class index >= 0 or None. "
                f"Received: background_class={background_class!r}"
            )
        self.smooth = float(smooth)
        self.dice_weight = float(dice_weight)
        self.iou_weight = float(iou_weight)
        self.cross_entropy_weight = float(cross_entropy_weight)
        self.reduction_mode = reduction_mode
        self.background_class = background_class

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return dice_iou_loss(
            y_true,
            y_pred,
            smooth=self.smooth,
            dice_weight=self.dice_weight,
            iou_weight=self.iou_weight,
            cross_entropy_weight=self.cross_entropy_weight,
            reduction_mode=self.reduction_mode,
            background_class=self.background_class,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            # keras.losses.Loss.get_config() leaves out `dtype`; keep it so configs round-trip.
            "dtype": self.dtype,
            "smooth": self.smooth,
            "dice_weight": self.dice_weight,
            "iou_weight": self.iou_weight,
            "cross_entropy_weight": self.cross_entropy_weight,
            "reduction_mode": self.reduction_mode,
            "background_class": self.background_class,
        }
