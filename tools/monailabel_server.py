"""The ``monailabel`` CLI (same arguments) with two import shims for this project's pinned CPU environment:

    python tools/monailabel_server.py start_server --app <app> --studies <dir> --conf models medsegdiff_v2

monailabel 0.8.5 imports at start-up
- ``pydicom-seg`` 0.4.1 (its last release), which imports ``pydicom._storage_sopclass_uids``, a module removed in
  pydicom 3 (we pin 3.0.2): aliased to ``pydicom.uid``, which defines the same UIDs. Only DICOM SEG conversion uses
  pydicom-seg; reading NIfTI/DICOM images does not.
- ``torchvision.utils`` (``make_grid``/``save_image``, for DeepEdit's TensorBoard image grids): PyPI's torchvision
  wheels are CUDA builds that fail to import next to the CPU ``torch==2.13.0+cpu`` we pin, and the CPU wheel is only
  on download.pytorch.org. When torchvision does not import, a stub whose two functions raise is put in its place.
With pydicom < 3 and a torchvision matching torch installed, the plain ``monailabel`` command works the same.
"""

from __future__ import annotations

import importlib
import sys
import types


def _alias_pydicom_storage_uids() -> None:
    try:
        importlib.import_module("pydicom._storage_sopclass_uids")
    except ImportError:
        import pydicom.uid

        sys.modules["pydicom._storage_sopclass_uids"] = pydicom.uid


def _stub_torchvision_if_broken() -> None:
    try:
        importlib.import_module("torchvision.utils")
        return
    except (ImportError, RuntimeError):  # not installed, or a CUDA build next to a CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("torchvision is not importable here: TensorBoard image grids are unavailable")

    tv, utils = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")
    tv.__version__ = "0+unavailable"  # so that version checks (e.g. MONAI's optional_import) treat it as missing
    utils.make_grid = utils.save_image = unavailable
    tv.utils = utils
    sys.modules.update({"torchvision": tv, "torchvision.utils": utils})


def main() -> None:
    _alias_pydicom_storage_uids()
    _stub_torchvision_if_broken()
    from monailabel.main import Main

    Main().run()


if __name__ == "__main__":
    main()
