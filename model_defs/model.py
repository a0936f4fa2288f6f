"""The PCB defect segmentation model: a ResNet50 encoder with a U-Net decoder."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers

from model_defs.layers import EdgeEnhancementLayer
from pcb_inspect.classes import CLASS_NAMES

#: Background plus the six defect classes.
NUM_OUTPUTS = len(CLASS_NAMES) + 1
#: The encoder's stage outputs, by stride. The decoder takes skips from each.
_RESNET50_STAGES = {
    2: "conv1_relu",
    4: "conv2_block3_out",
    8: "conv3_block4_out",
    16: "conv4_block6_out",
    32: "conv5_block3_out",
}
#: The lighter encoder variant: ResNet50 cut after stage 3 (stride 8), without the stage-4
#: blocks that hold most of the shipped stage-4 cut's parameters and much of its forward
#: FLOPs. Trained by the GPU burst's ``light`` plan; shipped only at accuracy parity.
LIGHT_ENCODER_DEPTH = 3
_IMAGENET_MEAN = 116.78  # mean of ImageNet's per-channel means; the input is grayscale


def _conv_bn_relu(x: Any, filters: int, name: str) -> Any:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _reduce(x: Any, filters: int, name: str) -> Any:
    """1x1 conv + BN + ReLU down to ``filters`` channels."""
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _decoder_block(x: Any, skip: Any, filters: int, name: str, reduce: bool = False) -> Any:
    if reduce:
        # The encoder's stages are wide (1024 channels at stride 16, 512 at 8): a 3x3 conv
        # over their concatenation is most of the decoder's FLOPs. A 1x1 reduction of each
        # side first cuts that about 4x for the same output width.
        x = _reduce(x, filters, f"{name}_reduce_up")
        if skip.shape[-1] > filters:
            skip = _reduce(skip, filters, f"{name}_reduce_skip")
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = _conv_bn_relu(x, filters, f"{name}_a")
    return _conv_bn_relu(x, filters, f"{name}_b")


def build_model(
    encoder_weights: str | None = None,
    encoder_depth: int = 4,
    decoder_filters: tuple[int, ...] | None = None,
    edge_enhancement: bool = True,
    input_shape: tuple[int | None, int | None, int] = (None, None, 1),
    name: str = "pcb_defect_unet",
    reference: bool = False,
    decoder_reduction: bool = False,
) -> keras.Model:
    """Builds the defect segmentation model.

    The model takes raw grayscale pixels (0..255, any dtype castable to float) and returns, per
    pixel, the softmax over background plus the six DeepPCB classes. It is fully
    convolutional: any height and width that are multiples of ``2 ** encoder_depth``.

    Layout:
        * preprocessing inside the model (scaling, grayscale to 3 channels), so the service
          feeds raw pixels;
        * ``keras.applications.ResNet50`` encoder, cut after stage ``encoder_depth`` (4 stops
          at conv4, stride 16, and drops the 15M parameters of conv5);
        * a U-Net decoder with skips from every encoder stage (strides 8, 4, 2) and from the
          input itself (stride 1), so the mask has full resolution;
        * ``EdgeEnhancementLayer`` at stride 2 and stride 1, where thin copper edges still
          exist;
        * a 1x1 classifier with a float32 softmax (stable under mixed precision).

    Args:
        encoder_weights: ``None`` (train from scratch) or ``"imagenet"``; the latter downloads
            the ImageNet weights, so it needs internet.
        encoder_depth: Last ResNet50 stage used: 5 (stride 32, the full encoder), 4 (stride
            16, the shipped default), 3 (stride 8, :data:`LIGHT_ENCODER_DEPTH`, the lighter
            variant), or 2 for tiny test models.
        decoder_filters: Filters of the decoder blocks, from the deepest to full resolution;
            one per block, so ``encoder_depth`` entries. ``None`` picks the last
            ``encoder_depth`` entries of ``(256, 128, 64, 32, 16)``.
        edge_enhancement: Whether to insert the ``EdgeEnhancementLayer`` (off for ablations).
        input_shape: ``(H, W, 1)``; ``None`` for any size.
        name: Model name.
        reference: ``True`` builds the pair (golden-board) model: a second input
            ``reference``, the defect-free board registered to ``image``; the encoder sees
            board, reference and their signed difference as its three channels.
        decoder_reduction: Put a 1x1 reduction before each wide concatenation of the
            decoder (the lighter decoder; 28% fewer forward FLOPs, bench/decoder.py).

    Returns:
        An uncompiled ``keras.Model``.

    Raises:
        ValueError: On an unsupported argument value.
    """
    if encoder_weights not in (None, "imagenet"):
        raise ValueError(
            "`encoder_weights` must be None or 'imagenet'. "
            f"Received: encoder_weights={encoder_weights!r}"
        )
    if encoder_depth not in (2, 3, 4, 5):
        raise ValueError(
            f"`encoder_depth` must be 2, 3, 4 or 5. Received: encoder_depth={encoder_depth}"
        )
    if decoder_filters is None:
        decoder_filters = (256, 128, 64, 32, 16)[-encoder_depth:]
    if len(decoder_filters) != encoder_depth or any(f <= 0 for f in decoder_filters):
        raise ValueError(
            f"`decoder_filters` must hold {encoder_depth} positive integers (one per decoder "
            f"block). Received: decoder_filters={decoder_filters}"
        )
    if input_shape[-1] != 1:
        raise ValueError(
            f"The model takes grayscale images: input_shape[-1] must be 1. "
            f"Received: input_shape={input_shape}"
        )

    image = keras.Input(shape=input_shape, name="image")
    inputs: Any = image
    if reference:
        ref = keras.Input(shape=input_shape, name="reference")
        inputs = [image, ref]
        # Signed difference, mapped back into 0..255 so that the same preprocessing applies:
        # 127.5 is "no change", below is copper added (copper is dark), above copper lost.
        diff = layers.Subtract(name="difference")([image, ref])
        diff = layers.Rescaling(0.5, offset=127.5, name="difference_to_pixels")(diff)
        x = layers.Concatenate(name="pair_to_rgb")([image, ref, diff])
    else:
        x = layers.Concatenate(name="gray_to_rgb")([image, image, image])
    pixels = x
    if encoder_weights == "imagenet":
        # ResNet50's ImageNet weights expect caffe-style inputs: pixels minus the mean.
        x = layers.Rescaling(1.0, offset=-_IMAGENET_MEAN, name="preprocess")(x)
    else:
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    encoder = keras.applications.ResNet50(
        include_top=False, weights=encoder_weights, input_tensor=x
    )
    strides = [2 ** i for i in range(encoder_depth, 0, -1)]  # e.g. 16, 8, 4, 2
    features = {s: encoder.get_layer(_RESNET50_STAGES[s]).output for s in strides}
    # Full-resolution skip: the scaled image, so the last block sees the raw copper edges.
    full_res = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="full_res_skip")(
        pixels if reference else image
    )

    y = features[strides[0]]
    skips = [features[s] for s in strides[1:]] + [full_res]
    for i, (skip, filters) in enumerate(zip(skips, decoder_filters, strict=True)):
        stride = strides[i] // 2
        y = _decoder_block(y, skip, filters, name=f"decoder_s{stride}",
                           reduce=decoder_reduction)
        if edge_enhancement and stride in (2, 1):
            y = EdgeEnhancementLayer(name=f"edge_enhancement_s{stride}")(y)
    # Prior-probability bias (as in RetinaNet): defects cover ~0.5% of a board, so start with
    # P(defect) ~ 1% instead of 6/7. Otherwise the first hundreds of steps are spent only on
    # pushing the foreground probabilities down.
    prior = np.full((NUM_OUTPUTS,), np.log(0.01 / (NUM_OUTPUTS - 1)), dtype="float32")
    prior[0] = np.log(0.99)
    logits = layers.Conv2D(
        NUM_OUTPUTS, 1, name="classifier", bias_initializer=keras.initializers.Constant(prior)
    )(y)
    probs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, probs, name=name)
