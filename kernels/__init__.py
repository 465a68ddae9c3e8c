"""What the oneDNN int8 ops are and do: capability records, builders, prepack, fake/meta kernels,
probes, plain-PyTorch references, the CPU facts and the private torch names we use.

Imported as `inductor_quant.kernels` (docs/ARCHITECTURE.md, "Rooms").
"""
