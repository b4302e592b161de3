"""Survival maths below models and evaluation: time bins and bin targets (bins.py), curves,
the risk score and Harrell's C (curves.py)."""
