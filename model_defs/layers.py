"""Custom layers of the PCB defect model."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

# Sobel kernels, scaled by 1/8 so that a unit step edge gives a response of about 1 and the
# edge features stay on the same scale as the normalised features they are fused with.
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype="float32") / 8.0
_SOBEL_Y = _SOBEL_X.T.copy()


@keras.saving.register_keras_serializable(package="pcb_inspect")
class EdgeEnhancementLayer(keras.layers.Layer):
    """Fuses fixed Sobel edge responses into a feature map through learnable weights.

    For every input channel the layer computes the horizontal and vertical Sobel responses
    ``gx`` and ``gy`` and the gradient magnitude ``sqrt(gx**2 + gy**2 + epsilon)``. The Sobel
    kernels are fixed (non-trainable); what the network learns is how to mix the ``3 * C``
    edge maps back into the ``C`` feature channels (a 1x1 projection, ``fusion_kernel``),
    added to the features as a residual:

        out = x + concat([gx, gy, |g|]) @ fusion_kernel + fusion_bias

    Where it sits, and why: PCB defects (pin holes, mouse bites, spurs) are a few pixels wide
    and are defined by where copper edges are, so the prior must act where fine edges still
    exist. The model applies it in the decoder at stride 2 (after the skip from ``conv1``) and
    again at full resolution, just before the classifier; at stride 32 such edges are gone.

    The kernels are cast to the compute dtype in ``call()``, so the layer runs under a
    ``mixed_bfloat16`` or ``mixed_float16`` policy.

    Args:
        epsilon: Added under the square root of the magnitude so its gradient stays finite on
            flat regions. Must be > 0.
        use_bias: Whether the fusion adds a learnable bias.
        fusion_initializer: Initializer of the fusion kernel.
        **kwargs: Base layer arguments (``name``, ``dtype``, ...).

    Input shape:
        ``(batch, height, width, channels)``, channels-last.

    Output shape:
        Same as the input.
    """

    def __init__(
        self,
        epsilon: float = 1e-6,
        use_bias: bool = True,
        fusion_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(epsilon, (int, float)) or epsilon <= 0:
            raise ValueError(
                f"`epsilon` must be a positive number. Received: epsilon={epsilon!r}"
            )
        self.epsilon = float(epsilon)
        self.use_bias = bool(use_bias)
        self.fusion_initializer = keras.initializers.get(fusion_initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4:
            raise ValueError(
                "EdgeEnhancementLayer expects a 4D input (batch, height, width, channels). "
                f"Received: input_shape={input_shape}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "The channel dimension of the input must be defined. "
                f"Received: input_shape={input_shape}"
            )
        self.channels = int(channels)
        # Depthwise kernels: one Sobel filter per channel, fixed.
        sobel = np.stack([_SOBEL_X, _SOBEL_Y], axis=-1)  # (3, 3, 2)
        sobel = np.repeat(sobel[:, :, None, :], self.channels, axis=2)  # (3, 3, C, 2)
        self.sobel_kernel = self.add_weight(
            name="sobel_kernel",
            shape=(3, 3, self.channels, 2),
            initializer=keras.initializers.Constant(sobel),
            trainable=False,
        )
        self.fusion_kernel = self.add_weight(
            name="fusion_kernel",
            shape=(3 * self.channels, self.channels),
            initializer=self.fusion_initializer,
            trainable=True,
        )
        if self.use_bias:
            self.fusion_bias = self.add_weight(
                name="fusion_bias",
                shape=(self.channels,),
                initializer="zeros",
                trainable=True,
            )
        else:
            self.fusion_bias = None

    def call(self, inputs: Any) -> Any:
        x = inputs
        # Cast explicitly: under a mixed policy the conv must run in the compute dtype.
        kernel = ops.cast(self.sobel_kernel, x.dtype)
        # Depth multiplier 2: output channel 2*c is gx of channel c, 2*c + 1 is gy.
        grads = ops.depthwise_conv(x, kernel, strides=1, padding="same")
        shape = ops.shape(x)
        grads = ops.reshape(grads, (shape[0], shape[1], shape[2], self.channels, 2))
        gx = grads[..., 0]
        gy = grads[..., 1]
        eps = ops.cast(self.epsilon, x.dtype)
        magnitude = ops.sqrt(gx * gx + gy * gy + eps)
        edges = ops.concatenate([gx, gy, magnitude], axis=-1)
        fused = ops.matmul(edges, ops.cast(self.fusion_kernel, x.dtype))
        if self.fusion_bias is not None:
            fused = fused + ops.cast(self.fusion_bias, x.dtype)
        return x + fused

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "use_bias": self.use_bias,
            "fusion_initializer": keras.initializers.serialize(self.fusion_initializer),
        }
