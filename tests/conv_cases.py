"""Conv layer cases shared by the TensorFlow tests (tests/layers/test_conv.py) and the
every-backend reference tests (tests/backends/test_layers.py)."""

from keras_dctsparse import DCTSparseConv1D
from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDepthwiseConv2D

# name -> (layer class, constructor kwargs, input shape)
CONV_CASES = {
    "1x1_cout<P": (DCTSparseConv2D, dict(filters=4, kernel_size=1), (2, 5, 6, 6)),
    "1x1_cout>P": (DCTSparseConv2D, dict(filters=10, kernel_size=1), (2, 5, 6, 4)),
    "3x3_cout<P_same": (DCTSparseConv2D, dict(filters=8, kernel_size=3, padding="same"),
                        (2, 7, 6, 3)),
    "3x3_cout>P": (DCTSparseConv2D, dict(filters=40, kernel_size=3), (2, 6, 6, 3)),
    "5x5_same_stride2": (DCTSparseConv2D, dict(filters=6, kernel_size=5, padding="same",
                                               strides=2), (2, 9, 8, 2)),
    "3x3_valid_stride2": (DCTSparseConv2D, dict(filters=12, kernel_size=3, strides=2),
                          (2, 9, 9, 4)),
    "3x5_unequal_strides": (DCTSparseConv2D, dict(filters=5, kernel_size=(3, 5),
                                                  strides=(1, 2), padding="same"),
                            (1, 7, 9, 3)),
    "3x3_dilation2": (DCTSparseConv2D, dict(filters=8, kernel_size=3, dilation_rate=2,
                                            padding="same"), (2, 9, 9, 3)),
    "3x3_groups2": (DCTSparseConv2D, dict(filters=8, kernel_size=3, groups=2,
                                          padding="same"), (2, 6, 6, 4)),
    "3x3_groups3_cout>P": (DCTSparseConv2D, dict(filters=30, kernel_size=3, groups=3),
                           (2, 6, 6, 6)),
    "3x3_groups_cin": (DCTSparseConv2D, dict(filters=8, kernel_size=3, groups=4,
                                             padding="same"), (2, 6, 6, 4)),
    "depthwise_dm1": (DCTSparseDepthwiseConv2D, dict(kernel_size=3, padding="same"),
                      (2, 6, 6, 4)),
    "depthwise_dm2": (DCTSparseDepthwiseConv2D, dict(kernel_size=3, depth_multiplier=2,
                                                     padding="same"), (2, 6, 6, 5)),
    "depthwise_dm12_stride2": (DCTSparseDepthwiseConv2D,
                               dict(kernel_size=3, depth_multiplier=12, strides=2),
                               (2, 7, 7, 3)),
    "depthwise_unequal_strides": (DCTSparseDepthwiseConv2D,
                                  dict(kernel_size=3, strides=(1, 2), padding="same"),
                                  (2, 7, 8, 3)),
    "conv1d_k5_same": (DCTSparseConv1D, dict(filters=7, kernel_size=5, padding="same"),
                       (2, 11, 3)),
    "conv1d_causal_dil2": (DCTSparseConv1D, dict(filters=4, kernel_size=3,
                                                 padding="causal", dilation_rate=2),
                           (2, 10, 3)),
    "conv1d_groups3_stride2": (DCTSparseConv1D, dict(filters=6, kernel_size=3, groups=3,
                                                     strides=2), (2, 12, 6)),
}
