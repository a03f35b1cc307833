from trtq.nn.modules import QUANT_MODULES, QuantConv2d, QuantLinear, quantizers
from trtq.nn.tensor_quantizer import TensorQuantizer

__all__ = ["QUANT_MODULES", "QuantConv2d", "QuantLinear", "TensorQuantizer", "quantizers"]
