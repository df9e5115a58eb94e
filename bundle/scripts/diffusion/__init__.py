"""Diffusion: noise schedules and samplers, the training inferer and loss, sampling, ensemble fusion, EMA."""
