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
