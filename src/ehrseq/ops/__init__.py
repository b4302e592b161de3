"""Operations: pod workflow (pod.py), remote checks (remote.py), size/time estimates
(estimate.py), offline plots (offline_plots.py) and experiment sweeps (sweep.py). Nothing
below imports this package."""
