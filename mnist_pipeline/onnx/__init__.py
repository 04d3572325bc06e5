"""ONNX: export and parity, the PyTorch reference of the graph, INT8 quantization, Runtime
sessions and timings.
"""
