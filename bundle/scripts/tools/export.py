"""Export MedSegDiff-V2 with ``torch.export`` (TorchScript cannot script or trace it in torch 2.13): two programs,

- ``condition.pt2``: image (B, C, H, W) -> (anchor_logits, feature, embedding), the Condition Model, run once per image;
- ``denoiser.pt2``: (x (B, K, H, W), timesteps (1,) float, anchor_logits, feature, embedding) -> the denoiser's
  prediction (B, K, H, W), x0 for the shipped weights (``prediction_type: sample``), one sampling step for every member
  of a batch sharing the timestep.

The batch is dynamic (ensemble members, slices); H = W = the config's ``roi_size`` is fixed (the SS-Former's
frequency grid specialises it), as inference resizes every image to it. Run from the bundle root, with the configs
used for inference (and the same overrides):

    python -m scripts.tools.export --ckpt models/model.pt --output models/
    python -m scripts.tools.export --ckpt models/model.pt --output models/ \
        --config_file "['configs/inference.yaml','configs/inference_volume.yaml']" --preset small

Load with ``ExportedMedSegDiffV2.load("models/")``: a drop-in network for ``DiffusionSegmentationInferer``. As
MONAI's ``ckpt_export`` does for TorchScript, each file also holds the bundle's ``metadata.json``, the config files (as
JSON) and the overrides it was exported with: ``read_extra_files("models/denoiser.pt2")``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn
from torch.export import Dim

from ..networks import MedSegDiffV2
from ..networks.unet import ConditionOutput

FILES = {"condition": "condition.pt2", "denoiser": "denoiser.pt2"}
# JSON stored in each exported file next to the program (MONAI's ckpt_export stores the same in a TorchScript file)
EXTRA_FILES = ("metadata.json", "configs.json", "overrides.json")


class ConditionProgram(nn.Module):
    """``MedSegDiffV2.condition`` with a plain tuple output (exported programs need pytree-flattenable outputs)."""

    def __init__(self, net: MedSegDiffV2) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.condition(image)[:3]  # no image: export refuses concat_image networks


class DenoiserProgram(nn.Module):
    """``MedSegDiffV2.forward`` with the cached condition passed as three tensors."""

    def __init__(self, net: MedSegDiffV2) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        anchor_logits: torch.Tensor,
        feature: torch.Tensor,
        embedding: torch.Tensor,
    ) -> torch.Tensor:
        return self.net(x, timesteps, condition=ConditionOutput(anchor_logits, feature, embedding))


def load_network(
    ckpt: str | None, config_file: str | Sequence[str] = "configs/inference.yaml", **override: Any
) -> tuple[MedSegDiffV2, int]:
    """The bundle's ``network_def`` (with overrides, e.g. ``{"preset": "small"}``) in eval mode with the checkpoint's
    weights (``{"model": state_dict}`` or a bare state dict), and the configured ``roi_size``."""
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(override)
    net: MedSegDiffV2 = parser.get_parsed_content("network_def")
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return net.eval(), int(parser.get_parsed_content("roi_size"))


def export_programs(net: MedSegDiffV2, roi_size: int) -> dict[str, torch.export.ExportedProgram]:
    """Exports the Condition Model and the denoiser of ``net`` (CPU, float32) for ``roi_size`` x ``roi_size`` inputs
    and any batch size (the SS-Former's frequency grid fixes the spatial size)."""
    net = net.eval().cpu()
    if roi_size % net.size_divisor:
        raise ValueError(f"roi_size {roi_size} is not a multiple of the network's total stride {net.size_divisor}.")
    if net.self_condition:  # the exported denoiser has no input for the previous x0 estimate
        raise ValueError("export does not support self_condition networks yet: sample them with inference.yaml.")
    if net.concat_image:  # the exported denoiser has no input for the image
        raise ValueError("export does not support concat_image networks yet: sample them with inference.yaml.")
    batch = {0: Dim("batch", min=1, max=4096)}
    image = torch.randn(2, net.in_channels, roi_size, roi_size)  # batch 2: size 1 would be specialised
    x = torch.randn(2, net.out_channels, roi_size, roi_size)
    t = torch.tensor([500.0])
    with torch.no_grad():
        cond = net.condition(image)[:3]
        condition = torch.export.export(ConditionProgram(net), (image,), dynamic_shapes=(batch,))
        denoiser = torch.export.export(
            DenoiserProgram(net), (x, t, *cond), dynamic_shapes=(batch, None, batch, batch, batch)
        )
    return {"condition": condition, "denoiser": denoiser}


def save_programs(
    programs: dict[str, torch.export.ExportedProgram], output: str | Path, extra_files: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Writes the programs to ``output``, each file with ``extra_files`` (names of :data:`EXTRA_FILES` -> JSON-able
    values) stored as JSON."""
    unknown = sorted(set(extra_files or {}) - set(EXTRA_FILES))
    if unknown:
        raise ValueError(f"extra files {unknown}: the names are {EXTRA_FILES}.")
    extra = {k: json.dumps(v, default=str) for k, v in (extra_files or {}).items()}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / FILES[k] for k in programs}
    for k, p in paths.items():
        torch.export.save(programs[k], p, extra_files=extra)
    return paths


def read_extra_files(path: str | Path) -> dict[str, Any]:
    """The JSON stored with an exported program (:data:`EXTRA_FILES` it holds, parsed)."""
    extra = dict.fromkeys(EXTRA_FILES, "")
    torch.export.load(path, extra_files=extra)
    return {k: json.loads(v) for k, v in extra.items() if v}


def bundle_extra_files(config_file: str | Sequence[str], meta_file: str | None, override: Mapping[str, Any]) -> dict:
    """``metadata.json`` (when ``meta_file`` exists), the config files by name and the overrides of an export."""
    files = [config_file] if isinstance(config_file, str) else list(config_file)
    extra: dict[str, Any] = {
        "configs.json": {Path(f).name: ConfigParser.load_config_file(f) for f in files},
        "overrides.json": dict(override),
    }
    if meta_file is not None and Path(meta_file).is_file():
        extra["metadata.json"] = ConfigParser.load_config_file(meta_file)
    return extra


def _channels(program: torch.export.ExportedProgram) -> int:
    """Channels of a program's first input (its example shape is kept in the graph)."""
    name = program.graph_signature.user_inputs[0]
    return int(next(n for n in program.graph.nodes if n.name == name).meta["val"].shape[1])


class ExportedMedSegDiffV2(nn.Module):
    """The exported pair behind ``MedSegDiffV2``'s sampling interface (``condition``, ``forward(x, t, condition=)``,
    ``in_channels``/``out_channels``), so that ``DiffusionSegmentationInferer`` runs it unchanged."""

    def __init__(self, condition: torch.export.ExportedProgram, denoiser: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.condition_program, self.denoiser_program = condition.module(), denoiser.module()
        self.in_channels, self.out_channels = _channels(condition), _channels(denoiser)

    @classmethod
    def load(cls, folder: str | Path) -> ExportedMedSegDiffV2:
        folder = Path(folder)
        return cls(*(torch.export.load(folder / FILES[k]) for k in ("condition", "denoiser")))

    def condition(self, image: torch.Tensor) -> ConditionOutput:
        return ConditionOutput(*self.condition_program(image))

    def forward(self, x: torch.Tensor, timesteps: float | torch.Tensor, condition: ConditionOutput) -> torch.Tensor:
        t = torch.as_tensor(timesteps, dtype=torch.float32, device=x.device).reshape(-1)
        if t.numel() != 1:
            raise ValueError("the exported denoiser takes one timestep shared by the batch (as in sampling).")
        return self.denoiser_program(x, t, *condition[:3])  # no image: export refuses concat_image networks


def export(
    ckpt: str = "models/model.pt",
    output: str = "models",
    config_file: str | Sequence[str] = "configs/inference.yaml",
    meta_file: str | None = "configs/metadata.json",
    **override: Any,
) -> dict[str, Path]:
    """CLI: loads ``network_def`` from ``config_file`` (+ ``override``s such as ``--preset small`` or
    ``--roi_size 128``) with the weights of ``ckpt``; writes ``condition.pt2`` and ``denoiser.pt2`` to ``output``,
    each holding ``meta_file``, the configs and the overrides (:func:`read_extra_files`)."""
    net, roi_size = load_network(ckpt, config_file, **override)
    extra = bundle_extra_files(config_file, meta_file, override)
    paths = save_programs(export_programs(net, roi_size), output, extra)
    for p in paths.values():
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    import fire

    fire.Fire(export)
