"""Dream Window's algorithms: plain torch/numpy code with no ComfyUI import.

Everything here is testable and benchmarkable without a ComfyUI install; the node
classes in ``nodes/`` are thin wrappers around these modules.
"""
