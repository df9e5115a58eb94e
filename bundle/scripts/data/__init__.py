"""Data: datalists and folder layouts, file readers, DICOM series, the data checks, inference inputs, transforms."""
