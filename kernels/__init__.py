"""What the oneDNN int8 ops are and do: capability records, builders, prepack, fake/meta kernels,
probes, plain-PyTorch references, the CPU facts and the private torch names we use.

Imported as `inductor_quant.kernels` (docs/ARCHITECTURE.md, "Rooms").
"""

if __name__ != "inductor_quant.kernels":  # imported by a path, not by its one import root
    from inductor_quant.kernels.import_root import shadowed_import_root

    raise shadowed_import_root(__name__)
