"""Models: the dlib teacher, its PyTorch and ONNX port, VQ-VAE and student."""
