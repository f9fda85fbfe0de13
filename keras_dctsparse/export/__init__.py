"""Export of models with DCT-plus-sparse layers (TFLite, builtin ops only)."""

from keras_dctsparse.export.tflite import QUANTIZATIONS
from keras_dctsparse.export.tflite import TFLiteExportError
from keras_dctsparse.export.tflite import builtin_ops_mode
from keras_dctsparse.export.tflite import convert_tflite
from keras_dctsparse.export.tflite import export_tflite

__all__ = [
    "QUANTIZATIONS",
    "TFLiteExportError",
    "builtin_ops_mode",
    "convert_tflite",
    "export_tflite",
]
