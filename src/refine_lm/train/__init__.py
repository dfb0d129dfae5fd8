"""Training: the shared loop (loop.py), optimiser (optim.py), checkpoints (checkpoint.py),
metrics (metrics.py) and objectives (ntp.py; REFINE next)."""
