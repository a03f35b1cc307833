"""EfficientDM: quantization-aware LoRA (`qalora`), learned per-timestep step sizes (TALSQ, in
`trtq.nn.timestep`) and data-free distillation (`distill`). The method is `trtq.methods.efficientdm`."""
