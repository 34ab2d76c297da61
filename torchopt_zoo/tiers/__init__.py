"""Tier machinery that never names a rule: flat buffers (flat.py), Triton launching (triton.py), and reading compiled kernels (codegen.py)."""
