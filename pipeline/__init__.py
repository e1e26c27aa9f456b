"""Deployment stages: export to ONNX, precision conversion, verification and benchmarks."""
