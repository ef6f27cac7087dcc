"""Export of the streaming step (encoder chunk + heads, explicit caches) to ONNX, its int8
quantization, the onnxruntime encoder step, and parity checks against PyTorch."""
