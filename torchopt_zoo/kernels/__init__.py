"""Direction rules by tier: ``reference`` (per-tensor math), ``foreach`` (multi-tensor kernels)."""
