"""MedSegDiff-V2 network, one module per component named in the paper; ``EnsembleSegmenter``: image -> segmentation."""

from .medsegdiff_v2 import ANCHOR_MODES, GATE_MODES, PRESETS, SEMANTIC_MODES, MedSegDiffV2
from .nbp_filter import NBPFilter
from .segmenter import EnsembleSegmenter
from .ss_former import FourierCrossAttention, SSFormer, SSFormerBlock
from .unet import ConditionModel, ConditionOutput, UNetTrunk
from .usa import USA, SpatialAttention

__all__ = [
    "ANCHOR_MODES",
    "GATE_MODES",
    "PRESETS",
    "SEMANTIC_MODES",
    "ConditionModel",
    "ConditionOutput",
    "EnsembleSegmenter",
    "FourierCrossAttention",
    "MedSegDiffV2",
    "NBPFilter",
    "SSFormer",
    "SSFormerBlock",
    "SpatialAttention",
    "UNetTrunk",
    "USA",
]
