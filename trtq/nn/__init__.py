from trtq.nn.modules import (
    LAYER_KINDS,
    QUANTIZABLE,
    QuantConv2d,
    QuantLinear,
    is_quantized,
    float_mode,
    quantizers,
    register_layer_kind,
)
from trtq.nn.tensor_quantizer import TensorQuantizer

__all__ = ["LAYER_KINDS", "QUANTIZABLE", "QuantConv2d", "QuantLinear", "TensorQuantizer", "is_quantized",
           "quantizers", "register_layer_kind", "float_mode"]
