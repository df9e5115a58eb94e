"""MONAI Label tasks of the MedSegDiff-V2 app: inference (mask + uncertainty), uncertainty scoring and strategy."""
