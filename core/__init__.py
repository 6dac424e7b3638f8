"""Dream Window's algorithms: plain torch/numpy code with no ComfyUI import.

Everything here is testable and benchmarkable without a ComfyUI install; the node
classes in ``nodes/`` are thin wrappers around these modules. One sub-package per domain:
``loop`` (session, supervisor, prompts, interpolation, frames), ``cache`` (the aesthetic
cache and its policies), ``window`` (playback, publishing, status, export) and ``accel``
(CUDA graphs, torch threads, the GPU monitor); ``atomic_files`` and ``server_settings``
serve them all.
"""
