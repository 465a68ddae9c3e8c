"""Benchmarks (the runner, the model zoo, the peers, profiles): imported as `inductor_quant.benchmarks`."""

if __name__ != "inductor_quant.benchmarks":  # imported by a path, not by its one import root
    from inductor_quant.kernels.import_root import shadowed_import_root

    raise shadowed_import_root(__name__)
