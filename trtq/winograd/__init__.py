"""Winograd F(m, 3) convolution: exact transforms (transforms), float conv (conv), INT8 quantization in the
Winograd domain (quant), the quantized layer (layer) and the data-free learning of transform scales (learn).
Submodules are imported explicitly; this package imports nothing so trtq.ops can use its helpers."""
