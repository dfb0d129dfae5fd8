"""Training: the shared loop (loop.py), data parallelism under torchrun (distributed.py), optimiser
(optim.py), checkpoints (checkpoint.py), metrics (metrics.py), data (data.py) and objectives (ntp.py;
REFINE's is refine/objective.py)."""
