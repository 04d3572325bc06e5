"""The data: the raw MNIST files (mirrors, checksums, retried downloads), the prepared
dataset and the in-memory data module.
"""
