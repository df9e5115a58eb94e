"""Tools: export with torch.export, and the model-zoo package."""
