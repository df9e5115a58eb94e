"""Peak memory and time of volume inference on a synthetic CT (default 512x512x200), through the bundle's
inference workflow (inference.yaml + inference_volume.yaml) with random weights of the chosen preset.

Example::

    python bench/bench_volume_memory.py --shape 512 512 200 --preset small --ensemble 10 --steps 1 --slice-batch 1
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigWorkflow

from common import BUNDLE, arg_parser, config_files, use_bundle

use_bundle()


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--roi", type=int, default=256)
    ap.add_argument("--ensemble", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--slice-batch", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        ct = rng.normal(0, 300, size=args.shape).astype(np.int16)
        affine = np.diag([0.7, 0.7, 1.5, 1.0])
        nib.save(nib.Nifti1Image(ct, affine), tmp / "ct.nii.gz")
        del ct
        overrides = {"preset": args.preset, "num_classes": 1, "modality": "ct", "roi_size": args.roi}
        wf = ConfigWorkflow(
            config_file=config_files("inference.yaml", "inference_volume.yaml"),
            workflow_type="infer",
            meta_file=config_files("metadata.json")[0],
            logging_file=None,
            bundle_root=str(BUNDLE),
            input=str(tmp / "ct.nii.gz"),
            output_dir=str(tmp / "out"),
            ckpt_path=str(tmp / "model.pt"),
            ensemble_size=args.ensemble,
            num_inference_steps=args.steps,
            slice_batch=args.slice_batch,
            **overrides,
        )
        wf.initialize()
        torch.save(wf.parser.get_parsed_content("network_def").state_dict(), tmp / "model.pt")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        t0 = time.perf_counter()
        wf.run()
        seconds = time.perf_counter() - t0
        out = nib.load(tmp / "out" / "ct_seg.nii.gz")
        result = {
            "shape": args.shape,
            "preset": args.preset,
            "roi": args.roi,
            "ensemble": args.ensemble,
            "steps": args.steps,
            "slice_batch": args.slice_batch,
            "seconds": round(seconds, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
            "rss_before_run_gib": round(rss0, 2),
            "output_shape": list(out.shape),
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
