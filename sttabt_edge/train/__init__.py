"""Training: ApproxNet distillation, concrete (STTABT) thresholds, LTP / top-k baselines.

    from sttabt_edge.train.approx import train_approx          # ApproxNet from a dense model
    from sttabt_edge.train.concrete import train_concrete      # STTABT for a retention target
    from sttabt_edge.train.baselines import train_baseline     # LTP / top-k, trained the same way
    from sttabt_edge.train.artifacts import load_sttabt        # (model, reducer) of an output dir

All share one loop (engine.py: single CPU process, or torchrun + DDP via distributed.py),
crash-safe resumable checkpoints (checkpoint.py), the losses (losses.py) and the data
pipeline (sources.py: where examples come from; data.py: batches). Configs: config.py.
Accuracy-vs-retention sweeps for the benchmarks: sweep.py.
"""
