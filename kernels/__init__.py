"""oneDNN int8 op builders, prepack, lowerings and plain-PyTorch references.

Imported as `inductor_quant.kernels`.
"""
