"""The data side's public names in one import (``scripts.data.load_datalist`` ...), kept for scripts and notes that
use them; the code lives by job in :mod:`.datalist` (sources), :mod:`.readers` (one file), :mod:`.validation`
(checks), :mod:`.inputs` (inference inputs) and :mod:`.transforms`."""

from .datalist import find_folder_cases, split_cases
from .errors import DataValidationError
from .inputs import load_images
from .transforms import LabelToOneHotd
from .validation import load_datalist, validate_datalist

__all__ = [
    "DataValidationError",
    "LabelToOneHotd",
    "find_folder_cases",
    "load_datalist",
    "load_images",
    "split_cases",
    "validate_datalist",
]
