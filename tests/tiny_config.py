"""The tiny MedSegDiff-V2 configuration shared by the tests (CPU-fast, every component present)."""

TINY_NET = {
    "preset": None,
    "channels": [8, 16, 16],
    "cond_channels": [8, 16, 16],
    "num_res_blocks": 1,
    "former_dim": 16,
    "former_depth": 2,
    "former_heads": 2,
    "patch_size": 1,
    "filter_width": 4,
    "filter_blocks": 6,
    "concat_anchor": True,  # the bundle default: the anchor probabilities reach the denoiser's input
}

# one short training epoch of the tiny network (train.yaml keys), for the workflow tests
TINY_TRAINING = {
    "roi_size": 32,
    "batch_size": 8,
    "num_workers": 0,
    "epochs": 1,
    "val_interval": 1,
    "num_inference_steps": 2,
    "ema_momentum": 0.1,
    "ema_power": None,
    **{f"network_def#{k}": v for k, v in TINY_NET.items()},
}

# a fast evaluation (evaluate.yaml keys): 2 DDIM steps, 3 ensemble members, a 2-case grid
TINY_EVAL = {"num_inference_steps": 2, "ensemble_size": 3, "sampler": "ddim", "grid_cases": 2}
