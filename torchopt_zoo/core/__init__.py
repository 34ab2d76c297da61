"""The optimizer base, the Rule record and registry, and the direction a rule returns."""
