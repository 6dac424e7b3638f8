"""Speed and GPU sharing: CUDA-graph replay, the torch thread count, and the GPU monitor's logic."""
