"""Process-wide switches.

``check_tensor_values``: when True (the default), a tensor curvature or
interpolation weight is checked to be finite (and positive, for ``c``) before
each launch. On CUDA that check synchronises the stream; set it to False in
training loops with a learnable curvature once the model is known to be sound.
It is skipped inside ``torch.compile`` tracing and CUDA-graph capture.
"""

check_tensor_values = True

# Test switch: fill every kernel output with NaN before the launch, so that a
# test can see that each element was written. Costs one fill per output.
poison_outputs = False
