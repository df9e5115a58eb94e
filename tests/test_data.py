"""Data side: datalist validation (demo data, every bad input), folder layouts, transforms, DICOM series folders."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, NibabelReader, list_data_collate
from monai.transforms import Compose
from PIL import Image

from scripts.data import datalist, transforms, validation
from scripts.runtime.errors import DataValidationError

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
VOLUME = ("volume.yaml",)  # the 3D overlay of train.yaml


def build_config(dataset_dir: Path, overlays: tuple[str, ...] = (), **values: Any) -> ConfigParser:
    """The bundle's own training config (``train.yaml`` + ``overlays``) on ``dataset_dir`` with ``values``: the
    tests run the transform chains the configs define."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in ("train.yaml", *overlays)])
    parser.update({"bundle_root": str(CONFIGS.parent), "dataset_dir": str(dataset_dir), **values})
    parser.parse()
    return parser


# ----------------------------------------------------------------------------------------------------------------------
# helpers writing small cases
# ----------------------------------------------------------------------------------------------------------------------
def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path.name


def save_png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return path.name


def nifti_case(tmp_path: Path, image: np.ndarray | None = None, label: np.ndarray | None = None) -> dict[str, str]:
    image = np.random.default_rng(0).random((8, 9, 5), dtype=np.float32) if image is None else image
    label = (image > 0.5).astype(np.uint8) if label is None else label
    return {"image": save_nifti(tmp_path / "img.nii.gz", image), "label": save_nifti(tmp_path / "lbl.nii.gz", label)}


def png_case(tmp_path: Path, mask: np.ndarray | None = None) -> dict[str, str]:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    mask = np.where(rgb[..., 0] > 127, 255, 0).astype(np.uint8) if mask is None else mask
    return {"image": save_png(tmp_path / "img.png", rgb), "label": save_png(tmp_path / "img_mask.png", mask)}


def validate(cases: Any, root: Path, num_classes: int, spatial_dims: int, **kw: Any) -> list[dict]:
    """The training section of ``cases``: a list of cases, or anything ``load_datalist`` takes."""
    datalist = {"training": cases} if isinstance(cases, list) else cases
    return validation.load_datalist(datalist, root, "training", num_classes, spatial_dims, **kw)


def names(cases: list[dict]) -> set[str]:
    return {Path(c["image"]).name for c in cases}


def expect_error(match_file: str, phrase: str, *args: Any, **kw: Any) -> str:
    with pytest.raises(DataValidationError) as info:
        validate(*args, **kw)
    message = str(info.value)
    assert match_file in message and phrase in message, message
    return message


# ----------------------------------------------------------------------------------------------------------------------
# demo data
# ----------------------------------------------------------------------------------------------------------------------
def test_demo_isic_datalist(demo_data: Path) -> None:
    root = demo_data / "isic"
    sections = validation.validate_datalist(root / "datalist.json", root, num_classes=1, spatial_dims=2, in_channels=3)
    assert [len(sections["training"]), len(sections["validation"])] == [32, 8]
    for case in sections["training"] + sections["validation"]:
        assert Path(case["image"]).is_absolute() and Path(case["image"]).is_file() and Path(case["label"]).is_file()
    assert not names(sections["training"]) & names(sections["validation"]), "training and validation overlap"


def test_demo_hippocampus_datalist(demo_data: Path) -> None:
    root = demo_data / "hippocampus"
    # a datalist path relative to dataset_dir, as a bundle config would pass it
    train = validation.load_datalist("datalist.json", root, "training", num_classes=2, spatial_dims=3, in_channels=1)
    val = validation.load_datalist("datalist.json", root, "validation", num_classes=2, spatial_dims=3)
    assert (len(train), len(val)) == (9, 3)
    assert all(Path(c["label"]).parent.name == "labelsTr" for c in train + val)
    # the same data is rejected as 2D, and with too few classes
    expect_error("hippocampus_", "is a 3D volume", root / "datalist.json", root, 2, 2)
    expect_error("labelsTr/hippocampus_", "label values outside 0..1", root / "datalist.json", root, 1, 3)


# ----------------------------------------------------------------------------------------------------------------------
# bad inputs: each names the file and the problem
# ----------------------------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    case = nifti_case(tmp_path)
    expect_error("nope.nii.gz", "file not found", [{**case, "label": "nope.nii.gz"}], tmp_path, 1, 3)


def test_truncated_nifti(tmp_path: Path) -> None:
    case = nifti_case(tmp_path, image=np.random.default_rng(1).random((30, 30, 20), dtype=np.float32))
    raw = (tmp_path / case["image"]).read_bytes()
    (tmp_path / case["image"]).write_bytes(raw[: len(raw) // 2])
    expect_error("img.nii.gz", "cannot be read (corrupt or truncated file?)", [case], tmp_path, 1, 3)


def test_garbage_png_and_truncated_png(tmp_path: Path) -> None:
    case = png_case(tmp_path)
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    expect_error("garbage.png", "cannot be read", [{**case, "image": "garbage.png"}], tmp_path, 1, 2)
    raw = (tmp_path / case["image"]).read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    expect_error("cut.png", "cannot be read", [{**case, "image": "cut.png"}], tmp_path, 1, 2)


def test_shape_mismatch(tmp_path: Path) -> None:
    case = nifti_case(tmp_path, label=np.zeros((8, 9, 6), np.uint8))
    expect_error("lbl.nii.gz", "shape mismatch", [case], tmp_path, 1, 3)
    case = png_case(tmp_path, mask=np.zeros((12, 11), np.uint8))
    expect_error("img_mask.png", "shape mismatch", [case], tmp_path, 1, 2)


def test_geometry_mismatch(tmp_path: Path) -> None:
    case = nifti_case(tmp_path)
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 2.0, 0.0]
    save_nifti(tmp_path / case["label"], np.ones((8, 9, 5), np.uint8), shifted)
    expect_error("lbl.nii.gz", "geometry mismatch", [case], tmp_path, 1, 3)
    validate([case], tmp_path, 1, 3, affine_tol=5.0)  # within a (silly) tolerance it passes


def test_label_values_out_of_range(tmp_path: Path) -> None:
    label = np.zeros((8, 9, 5), np.uint8)
    label[2, 2, 2], label[3, 3, 3] = 2, 5
    case = nifti_case(tmp_path, label=label)
    message = expect_error("lbl.nii.gz", "label values outside 0..2", [case], tmp_path, 2, 3)
    assert "found 5" in message
    validate([case], tmp_path, 5, 3)


def test_binary_255_masks(tmp_path: Path) -> None:
    case = png_case(tmp_path)  # a 0/255 mask
    assert validate([case], tmp_path, 1, 2)[0]["label"].endswith("img_mask.png")
    expect_error("img_mask.png", "label values outside 0..1", [case], tmp_path, 1, 2, binary_255=False)
    expect_error("img_mask.png", "found 255", [case], tmp_path, 2, 2)  # 255 is binary-only
    grey = png_case(tmp_path, mask=np.full((12, 10), 128, np.uint8))
    expect_error("img_mask.png", "found 128", [grey], tmp_path, 1, 2)


def test_label_not_integer(tmp_path: Path) -> None:
    case = nifti_case(tmp_path, label=np.full((8, 9, 5), 0.5, np.float32))
    expect_error("lbl.nii.gz", "label is not integer-valued", [case], tmp_path, 1, 3)
    nan = np.zeros((8, 9, 5), np.float32)
    nan[0, 0, 0] = np.nan
    case = nifti_case(tmp_path, label=nan)
    expect_error("lbl.nii.gz", "label is not integer-valued", [case], tmp_path, 1, 3)
    case = nifti_case(tmp_path, label=np.ones((8, 9, 5), np.float32))  # float but integer-valued: fine
    validate([case], tmp_path, 1, 3)


def test_nan_image(tmp_path: Path) -> None:
    image = np.ones((8, 9, 5), np.float32)
    image[1, 2, 3], image[4, 4, 4] = np.nan, np.inf
    case = nifti_case(tmp_path, image=image, label=np.zeros((8, 9, 5), np.uint8))
    expect_error("img.nii.gz", "NaN or infinite intensities (2 voxels)", [case], tmp_path, 1, 3)


def test_wrong_dimensionality(tmp_path: Path) -> None:
    case = nifti_case(tmp_path)
    expect_error("img.nii.gz", "is a 3D volume (spatial shape 8x9x5) but spatial_dims=2", [case], tmp_path, 1, 2)
    case = png_case(tmp_path)
    expect_error("img.png", "is a 2D image (spatial shape 10x12) but spatial_dims=3", [case], tmp_path, 1, 3)


def test_channels(tmp_path: Path) -> None:
    case = png_case(tmp_path)
    expect_error("img.png", "image has 3 channels, expected in_channels=1", [case], tmp_path, 1, 2, in_channels=1)
    save_png(tmp_path / "rgb_mask.png", np.zeros((12, 10, 3), np.uint8))
    expect_error("rgb_mask.png", "label has 3 channels", [{**case, "label": "rgb_mask.png"}], tmp_path, 1, 2)


def test_empty_or_malformed_datalist(tmp_path: Path) -> None:
    expect_error("datalist", "section 'training' is empty", {"training": []}, tmp_path, 1, 2)
    case = png_case(tmp_path)
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [case], "test": ["img.png"]}))
    with pytest.raises(DataValidationError, match="missing section 'validation'.*'training', 'test'"):
        validation.load_datalist(path, tmp_path, "validation", 1, 2)
    with pytest.raises(DataValidationError, match="not_there.json: datalist file not found"):
        validation.load_datalist("not_there.json", tmp_path, "training", 1, 2)
    path.write_text("{not json")
    with pytest.raises(DataValidationError, match="datalist.json: datalist cannot be read as JSON"):
        validation.load_datalist(path, tmp_path, "training", 1, 2)
    expect_error("{'image': 'img.png'}", "has no 'label' key", [{"image": "img.png"}], tmp_path, 1, 2)
    with pytest.raises(DataValidationError, match="datalist is empty"):
        validation.load_datalist([], tmp_path, "training", 1, 2)


def test_all_invalid_cases_are_reported_in_one_message(tmp_path: Path) -> None:
    case = png_case(tmp_path)
    cases = [case] + [{**case, "image": f"missing_{i}.png"} for i in range(8)]
    message = expect_error("missing_0.png", "file not found", cases, tmp_path, 1, 2)
    assert message.startswith("[training case 1] ") and "7 more invalid case(s)" in message
    assert "missing_5.png" in message and "missing_7.png" not in message  # at most 5 further cases listed


# ----------------------------------------------------------------------------------------------------------------------
# folder layouts and the split
# ----------------------------------------------------------------------------------------------------------------------
def test_folder_layout_images_tr(demo_data: Path) -> None:
    root = demo_data / "hippocampus"
    first = validation.validate_datalist(None, root, 2, 3, val_fraction=0.25, seed=3)
    again = validation.validate_datalist("", root, 2, 3, val_fraction=0.25, seed=3)
    assert first == again and (len(first["training"]), len(first["validation"])) == (9, 3)
    assert not names(first["training"]) & names(first["validation"])
    assert all(Path(c["image"]).name == Path(c["label"]).name for c in first["training"])
    other = validation.validate_datalist(None, root, 2, 3, val_fraction=0.25, seed=4)
    assert other["validation"] != first["validation"]


def test_folder_layout_images_masks(demo_data: Path, tmp_path: Path) -> None:
    sections = validation.validate_datalist(None, demo_data / "isic", 1, 2, val_fraction=0.2)
    assert (len(sections["training"]), len(sections["validation"])) == (32, 8)
    case = sections["training"][0]
    assert Path(case["label"]).name == Path(case["image"]).stem + "_segmentation.png"
    # an image without a mask is an error naming it
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    shutil.copy(case["image"], tmp_path / "images" / "lonely.jpg")
    with pytest.raises(DataValidationError, match="lonely.jpg: no matching label file"):
        validation.load_datalist(None, tmp_path, "training", 1, 2)


def test_folder_layout_nnunet_channel_suffix(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i in range(3):
        save_nifti(tmp_path / "imagesTr" / f"case{i}_0000.nii.gz", np.zeros((4, 5, 6), np.float32))
        save_nifti(tmp_path / "labelsTr" / f"case{i}.nii.gz", np.ones((4, 5, 6), np.uint8))
    sections = validation.validate_datalist(None, tmp_path, 1, 3, val_fraction=0.3)
    assert (len(sections["training"]), len(sections["validation"])) == (2, 1)
    with pytest.raises(DataValidationError, match="no datalist given and no folder layout found"):
        validation.load_datalist(None, tmp_path / "imagesTr", "training", 1, 3)


def test_split_cases() -> None:
    split = datalist.split_cases(list(range(10)), val_fraction=0.2, seed=0)
    assert split == datalist.split_cases(list(range(10)), 0.2, 0)
    assert len(split["validation"]) == 2 and sorted(split["training"] + split["validation"]) == list(range(10))
    assert (
        len(datalist.split_cases([1, 2], 0.01)["validation"]) == 1
        and datalist.split_cases([1, 2], 0.0)["validation"] == []
    )


# ----------------------------------------------------------------------------------------------------------------------
# transforms and the chains
# ----------------------------------------------------------------------------------------------------------------------
def test_intensity_by_modality() -> None:
    """inference.yaml's intensity table, which every chain uses: each modality to [0, 1]."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    intensity = parser.get_parsed_content("intensity")
    ct = torch.tensor([[-2000.0, -1000.0, 0.0, 1000.0, 3000.0]])
    assert torch.allclose(intensity["ct"]({"image": ct})["image"], torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))
    mr = torch.cat([torch.arange(1000.0), torch.tensor([1e6])])[None]
    out = intensity["mr"]({"image": mr})["image"]
    assert out.min() == 0 and out.max() == 1 and out[0, 500] == pytest.approx(0.5, abs=0.01)  # outlier clipped
    rgb = torch.tensor([[[0.0, 51.0, 255.0]]]).repeat(3, 1, 1)
    assert torch.allclose(intensity["rgb"]({"image": rgb})["image"], rgb / 255)


def test_label_to_one_hot() -> None:
    label = torch.tensor([[[0, 1], [2, 3]]])
    out = transforms.LabelToOneHotd("y", num_classes=3)({"y": label})["y"]
    assert out.dtype == torch.float32 and out.shape == (3, 2, 2)
    assert torch.equal(out.argmax(0) + out.amax(0), label[0].float())  # channel c-1 is class c
    binary = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert torch.equal(transforms.LabelToOneHotd("y", num_classes=1)({"y": binary})["y"], binary)
    with pytest.raises(ValueError, match="values outside 0..1"):
        transforms.LabelToOneHotd("y", num_classes=1)({"y": binary * 255})
    with pytest.raises(ValueError, match="must be a \\(1, \\*spatial\\) label map"):
        transforms.LabelToOneHotd("y", num_classes=1)({"y": binary.repeat(2, 1, 1)})


def test_binary_labels_become_0_1_and_multi_class_labels_pass(demo_data: Path) -> None:
    """train.yaml's label_transforms before the one-hot step: 0/255 masks -> 0/1; label maps unchanged."""
    mask = torch.tensor([[[0.0, 255.0], [255.0, 0.0]]])
    binary = Compose(build_config(demo_data / "isic", num_classes=1).get_parsed_content("label_transforms"))
    out = binary({"label": mask})["label"]
    assert torch.equal(out, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    assert torch.equal(binary({"label": out})["label"], out)
    multi = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    labels = Compose(build_config(demo_data / "isic", num_classes=2).get_parsed_content("label_transforms"))
    assert torch.equal(labels({"label": multi})["label"][:, 0, 1], torch.tensor([1.0, 0.0]))  # one-hot of class 1


def test_3d_chain_with_cache_dataset(demo_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roi, k = 32, 3
    parser = build_config(demo_data / "hippocampus", VOLUME, roi_size=roi, fg_ratio=1.0, slices_per_volume=k)
    reads: list[str] = []
    original = NibabelReader.read

    def counting_read(self: NibabelReader, path: Any, **kwargs: Any) -> Any:
        reads.append(str(path))
        return original(self, path, **kwargs)

    monkeypatch.setattr(NibabelReader, "read", counting_read)
    cases = parser.get_parsed_content("train#datalist")
    dataset = CacheDataset(cases, parser.get_parsed_content("train#preprocessing"), num_workers=1, progress=False)
    assert len(reads) == 2 * len(cases)  # image + label, once each, at cache time
    seen = []
    for _ in range(2):  # two epochs: random crops run on the cached volumes
        for batch in DataLoader(dataset, batch_size=4, collate_fn=list_data_collate):
            # 2.5D by default: the slice and its two neighbours as channels
            assert batch["image"].shape[1:] == (3, roi, roi) and batch["label"].shape[1:] == (2, roi, roi)
            seen.append(batch["label"])
    assert len(reads) == 2 * len(cases)
    labels = torch.cat(seen)
    assert labels.shape[0] == 2 * k * len(cases) and labels.dtype == torch.float32
    assert set(labels.unique().tolist()) == {0.0, 1.0} and labels.sum(1).max() == 1  # one-hot, no overlap
    assert (labels.sum((1, 2, 3)) > 0).all()  # fg_ratio=1: every crop is centred on foreground
    assert labels[:, 0].sum() > 0 and labels[:, 1].sum() > 0  # both hippocampus classes occur
    image = dataset[0][0]["image"]
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_2d_chain_on_isic(demo_data: Path) -> None:
    parser = build_config(demo_data / "isic", roi_size=64)
    cases = parser.get_parsed_content("train#datalist")
    out = parser.get_parsed_content("train#preprocessing")(cases[0])
    assert out["image"].shape == (3, 64, 64) and out["label"].shape == (1, 64, 64)
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert set(out["label"].unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("kind", ["isic", "hippocampus"])
def test_inference_reads_images_as_training_validates_them(demo_data: Path, kind: str) -> None:
    """The image half of each data kind's load / normalise / resize chain: inference (``inference.yaml``, + its volume
    overlay) prepares an image exactly as training validation (``train.yaml``, + ``volume.yaml``) does."""
    volume = kind == "hippocampus"
    train = build_config(demo_data / kind, VOLUME if volume else (), roi_size=32)
    infer = ConfigParser()
    infer.read_config([str(CONFIGS / c) for c in ("inference.yaml", *(["inference_volume.yaml"] if volume else []))])
    infer.update({"bundle_root": str(CONFIGS.parent), "roi_size": 32})
    case = train.get_parsed_content("validate#datalist")[0]
    expected = train.get_parsed_content("validate#preprocessing")(case)["image"]
    image = infer.get_parsed_content("preprocessing")({"image": case["image"]})["image"]
    assert image.shape == expected.shape and image.dtype == expected.dtype == torch.float32
    assert torch.equal(image.as_tensor(), expected.as_tensor())


def test_dicom_series_folder(demo_data: Path, tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    source = demo_data / "hippocampus" / "imagesTr" / "hippocampus_148.nii.gz"
    label = demo_data / "hippocampus" / "labelsTr" / "hippocampus_148.nii.gz"
    volume = sitk.Cast(sitk.ReadImage(str(source)), sitk.sitkInt16)
    series = tmp_path / "dicom_148"
    series.mkdir()
    uid = "1.2.826.0.1.3680043.2.1125.7"
    d = volume.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.GetDepth()):
        slice_ = volume[:, :, z]
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{uid}.{z + 1}",
            "0020|000d": f"{uid}.0",
            "0020|000e": uid,
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:g}" for v in volume.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0037": "\\".join(f"{v:g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{volume.GetSpacing()[2]:g}",
        }
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(series / f"slice_{z:03d}.dcm"))
        writer.Execute(slice_)

    (series / "README").write_text("scanner export notes")  # not DICOM: GDCM's scan leaves it out, as ITK's read does
    cases = validate([{"image": "dicom_148", "label": str(label)}], tmp_path, 2, 3)
    assert cases[0]["image"] == str(series)
    expect_error("dicom_148", "is a 3D volume", [{"image": "dicom_148", "label": str(label)}], tmp_path, 2, 2)
    parser = build_config(tmp_path, VOLUME, roi_size=32, fg_ratio=0.5, slices_per_volume=2)
    crops = parser.get_parsed_content("train#preprocessing")(cases[0])
    assert [tuple(c["image"].shape) for c in crops] == [(3, 32, 32)] * 2  # the slice and its neighbours (2.5D)
    assert [tuple(c["label"].shape) for c in crops] == [(2, 32, 32)] * 2


def test_gzip_garbage_nifti(tmp_path: Path) -> None:
    case = nifti_case(tmp_path)
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    expect_error("junk.nii.gz", "cannot be read", [{**case, "label": "junk.nii.gz"}], tmp_path, 1, 3)
