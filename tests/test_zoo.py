"""The MONAI model zoo's checks of a bundle (its CI's verify_bundle, its code-format job, its contributing rules), each
run here: files, metadata against its schema, version and changelog, large_files.yml, file sizes, the packages that
metadata.json pins, the data shapes (verify_net_in_out), the TorchScript export and the code format."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from tiny_config import TINY_NET
from torch import nn

from scripts.diffusion.fusion import METHODS
from scripts.diffusion.sampling import DiffusionSegmentationInferer
from scripts.diffusion.schedulers import make_scheduler
from scripts.networks import ConditionOutput, EnsembleSegmenter

if TYPE_CHECKING:
    from conftest import BundleCLI

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
SCHEMAS = REPO.parent / "shared" / "schema"  # the schema files the metadata may name, stored (no download)
MiB = 1024 * 1024


def _meta() -> dict:
    return json.loads(META.read_text(encoding="utf-8"))


# -- files, metadata, version ------------------------------------------------------------------------------------------
def test_bundle_has_the_files_the_zoo_requires() -> None:
    """LICENSE, configs/metadata.json, models/model.pt and one inference config (the zoo looks for .json, .yaml and
    .yml), and the docs of the bundle specification."""
    for name in ("LICENSE", "configs/metadata.json", "models/model.pt", "docs/README.md", "docs/data_license.txt"):
        assert (BUNDLE / name).is_file(), f"{name} is missing"
    assert [s for s in ("json", "yaml", "yml") if (CONFIGS / f"inference.{s}").is_file()] == ["yaml"]


def test_inference_config_has_the_keys_the_zoo_names(bundle_workflow: Callable[..., ConfigWorkflow]) -> None:
    """The zoo asks for bundle_root, device, network_def, inferer and output_dir in the inference config, and checks
    the inference workflow's properties."""
    wf = bundle_workflow("inference.yaml", workflow_type="infer", meta_file=str(META))
    assert [k for k in ("bundle_root", "device", "network_def", "inferer", "output_dir") if k not in wf.parser] == []
    assert not wf.check_properties(), wf.check_properties()


@pytest.mark.slow
@pytest.mark.skipif(not SCHEMAS.is_dir(), reason=f"no stored metadata schemas at {SCHEMAS}")
def test_metadata_verifies_against_the_schema_it_names(bundle_cli: BundleCLI, tmp_path: Path) -> None:
    """``monai.bundle verify_metadata`` as the zoo runs it, on the schema file that metadata.json's ``schema`` names
    (a schema file already at ``--filepath`` is used as it is); a metadata without a required field fails."""
    schema = SCHEMAS / _meta()["schema"].rsplit("/", 1)[-1]
    assert schema.is_file(), f"metadata.json names the schema {schema.name}, which is not in {SCHEMAS}"
    cmd = ["-m", "monai.bundle", "verify_metadata", "--meta_file", str(META), "--filepath", str(schema)]
    run = bundle_cli.python(*cmd, cwd=BUNDLE, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = _meta()
    del meta["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'network_data_format' is a required property"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(schema))


def test_metadata_json_is_formatted_as_the_zoo_formats_it() -> None:
    """The zoo's pre-commit formats JSON with 4-space indents, keys in their order."""
    text = META.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=4) + "\n"


def test_version_is_in_the_changelog_and_newer_than_every_other_entry() -> None:
    """The zoo refuses a metadata without ``version`` in ``changelog``, and a version number already released."""
    meta = _meta()
    version, changelog = meta["version"], meta["changelog"]
    number = re.compile(r"\d+\.\d+\.\d+")
    assert number.fullmatch(version) and all(number.fullmatch(v) for v in changelog), sorted(changelog)
    assert changelog.get(version, "").strip(), f"no changelog entry for {version}"
    parts = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
    assert [v for v in changelog if v != version and parts(v) >= parts(version)] == []


# -- large files -------------------------------------------------------------------------------------------------------
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")  # what the zoo's downloader checks


def _inside(relative: str) -> Path:
    path = (BUNDLE / relative).resolve()
    assert not Path(relative).is_absolute() and path.is_relative_to(BUNDLE), f"{relative} is not inside the bundle"
    return path


def _large_files() -> dict:
    names = [n for n in ("large_files.json", "large_files.yaml", "large_files.yml") if (BUNDLE / n).is_file()]
    assert names == ["large_files.yml"], names  # the zoo reads one of them
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "large_files.yml"))  # as the zoo reads it
    return parser.get()


def test_large_files_yml_has_the_format_the_zoo_downloads_from() -> None:
    """``large_files``: a list of {path, url, optional hash_val and hash_type}, what the zoo's CI downloads; the
    bundle's ``committed_files``: the weights shipped in the repository, each with its sha256."""
    content = _large_files()
    assert isinstance(content["large_files"], list)
    for entry in content["large_files"]:
        assert {"path", "url"} <= set(entry) <= {"path", "url", "hash_val", "hash_type"}, entry
        assert entry.get("hash_type") in (None, "", *HASH_TYPES), entry
        _inside(entry["path"])
    for entry in content.get("committed_files") or []:
        assert set(entry) == {"path", "hash_val", "hash_type"} and entry["hash_type"] == "sha256", entry
        assert re.fullmatch(r"[0-9a-f]{64}", entry["hash_val"]), entry
        assert _inside(entry["path"]).is_file(), entry


def _bundle_files() -> list[Path]:
    """The files a commit of the bundle holds: tracked, and untracked ones git does not ignore (every file where the
    bundle is not a git checkout)."""
    git = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "."]
    try:
        names = subprocess.run(git, cwd=BUNDLE, capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        return [p for p in BUNDLE.rglob("*") if p.is_file()]
    return [BUNDLE / n for n in names if n and (BUNDLE / n).is_file()]


def test_no_file_is_larger_than_the_zoo_allows() -> None:
    """The zoo takes no file over 25 MB and its pre-commit none over 1 MiB: the bundle's weights are the only files over
    1 MiB, each recorded in large_files.yml."""
    content = _large_files()
    recorded = {e["path"] for key in ("large_files", "committed_files") for e in content.get(key) or []}
    sizes = {p.relative_to(BUNDLE).as_posix(): p.stat().st_size for p in _bundle_files()}
    assert "configs/metadata.json" in sizes  # the listing found the bundle
    assert {f: s for f, s in sizes.items() if s > 25 * 1000 * 1000} == {}
    assert sorted(f for f, s in sizes.items() if s > MiB and f not in recorded) == []


# -- packages ----------------------------------------------------------------------------------------------------------
# import name -> distribution where the installed packages cannot tell (itk's modules come from several wheels)
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image", "ignite": "pytorch-ignite", "itk": "itk"}
# pinned by their own metadata keys
CORE = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}
# needed without being imported by the bundle's code: distribution -> (what needs it, a text in the configs, scripts or
# docs/README.md that shows the use)
INDIRECT = {
    "tqdm": ("ignite's ProgressBar (inference.yaml's handlers)", "ignite.handlers.ProgressBar"),
    "scikit-image": ("MONAI's KeepLargestConnectedComponentd (largest_component)", "KeepLargestConnectedComponentd"),
    "tensorboard": ("MONAI's TensorBoardStatsHandler (train.yaml)", "TensorBoardStatsHandler"),
    "itk": ("MONAI's ITKReader, LoadImaged's reader of DICOM series", "is_dicom_series"),
    "jsonschema": ("monai.bundle verify_metadata (docs/README.md)", "verify_metadata"),
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Top-level modules imported by ``path`` at run time (lazy imports in functions included; ``if TYPE_CHECKING:``
    blocks and relative imports left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def _third_party_imports() -> dict[str, list[str]]:
    """Distribution -> the files of bundle/scripts importing it (not the standard library nor the bundle's own code)."""
    installed = packages_distributions()
    found: dict[str, list[str]] = {}
    for path in sorted((BUNDLE / "scripts").rglob("*.py")):
        for module in _imports(path) - set(sys.stdlib_module_names) - {"__future__", "scripts"}:
            dists = {DISTRIBUTIONS[module]} if module in DISTRIBUTIONS else set(installed.get(module, ()))
            assert len(dists) == 1, f"{path.name} imports {module}, installed by {dists or 'nothing'}: map it"
            found.setdefault(_canonical(dists.pop()), []).append(path.relative_to(BUNDLE).as_posix())
    return found


def test_imports_are_read_from_the_code(tmp_path: Path) -> None:
    """The import scan sees top-level, lazy and dotted imports, maps import names to distributions, and skips the
    standard library, relative imports and ``TYPE_CHECKING`` blocks."""
    assert {"scipy", "pyyaml", "pillow", "pytorch-ignite", "simpleitk", "matplotlib"} <= set(_third_party_imports())
    source = "import os, PIL.Image\nfrom .x import y\nif TYPE_CHECKING:\n    import a\ndef f():\n    from b.c import d"
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports(path) == {"os", "PIL", "b"}


def test_metadata_pins_every_package_the_bundle_uses_and_no_other() -> None:
    """``required_packages_version`` (what the zoo installs before its checks) = the third-party imports of
    bundle/scripts + the packages MONAI and ignite need for the components the configs use (INDIRECT)."""
    meta = _meta()
    imported = _third_party_imports()
    assert set(CORE) <= set(imported) and all(meta[k] for k in CORE.values())
    texts = "\n".join(
        p.read_text(encoding="utf-8") for p in (*CONFIGS.rglob("*.yaml"), *(BUNDLE / "scripts").rglob("*.py"))
    )
    texts += (BUNDLE / "docs" / "README.md").read_text(encoding="utf-8")
    unused = {d: why for d, (why, evidence) in INDIRECT.items() if evidence not in texts}
    assert unused == {}, f"nothing shows these uses any more: {unused}"
    needed = (set(imported) - set(CORE)) | set(INDIRECT)
    pinned = {_canonical(k) for k in meta["required_packages_version"]}
    assert {d: imported.get(d) or INDIRECT[d][0] for d in needed - pinned} == {}, "missing from metadata.json"
    assert sorted(pinned - needed) == [], "pinned in metadata.json, used nowhere"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.partition("#")[0].strip()
        if line and not line.startswith("-"):
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned"
            pins[_canonical(name.strip())] = version.strip()
    return pins


def test_requirements_txt_installs_the_versions_metadata_pins() -> None:
    meta = _meta()
    want = {_canonical(k): v for k, v in meta["required_packages_version"].items()}
    want.update({d: meta[k] for d, k in CORE.items()})
    assert _pins(REPO / "requirements.txt") == want


# -- data shapes: verify_net_in_out ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_verify_net_in_out_passes_on_the_segmenter_and_fails_on_the_denoiser() -> None:
    """The zoo's data-shape check calls the network with a random image alone and compares the output's channels and
    dtype with network_data_format: ``segmenter_def`` (configs/segmenter.yaml) passes; ``network_def``, which also
    needs the noisy mask and the timestep, cannot be called so."""
    configs = [str(CONFIGS / "inference.yaml"), str(CONFIGS / "segmenter.yaml")]
    fast = {"num_inference_steps": 2, "ensemble_size": 2}
    verify_net_in_out(net_id="segmenter_def", meta_file=str(META), config_file=configs, device="cpu", **fast)
    with pytest.raises(TypeError, match="timesteps"):
        verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=configs, device="cpu")
    with pytest.raises(ValueError, match="output channel number"):  # the check compares: 2 classes against 1
        verify_net_in_out("segmenter_def", str(META), configs, device="cpu", num_classes=2, **fast)


class MaskOracle(nn.Module):
    """A denoiser predicting x0 from the image alone: class k where image channel k is above 0.5 (the image carries
    the masks), so that every member, and the fused segmentation, is that mask."""

    out_channels = 2

    def condition(self, image: torch.Tensor) -> ConditionOutput:
        return ConditionOutput(image, image, image)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, condition: ConditionOutput) -> torch.Tensor:
        return (condition.feature > 0.5).float() * 2 - 1  # x0 in [-1, 1]


def _masks(batch: int, size: int = 16) -> torch.Tensor:
    """(batch, 2, size, size) {0, 1}: two disjoint random structures per image."""
    g = torch.Generator().manual_seed(batch)
    first = torch.rand(batch, 1, size, size, generator=g) > 0.6
    second = (torch.rand(batch, 1, size, size, generator=g) > 0.6) & ~first
    return torch.cat([first, second], 1).float()


@pytest.mark.parametrize("method", METHODS)
def test_segmenter_returns_the_fused_mask_per_foreground_class(method: str) -> None:
    image = _masks(3)
    inferer = DiffusionSegmentationInferer(make_scheduler("ddim", 1000, "sample"), 3, 4, fusion="samples", seed=0)
    out = EnsembleSegmenter(MaskOracle(), inferer, 4, method)(image)
    assert out.dtype == torch.float32 and out.shape == image.shape
    torch.testing.assert_close(out, image, atol=0, rtol=0)  # each image its own masks, channel k = label k + 1
    with pytest.raises(ValueError, match="fusion='samples'"):  # a fused (B, K, ...) output is not N*K members
        mean = DiffusionSegmentationInferer(make_scheduler("ddim", 1000, "sample"), 3, 4, fusion="mean")
        EnsembleSegmenter(MaskOracle(), mean, 4, method)(image)


# -- export ------------------------------------------------------------------------------------------------------------
def test_torchscript_export_the_zoo_runs_fails_inside_the_network(tmp_path: Path) -> None:
    """The zoo's export check (``ckpt_export`` of ``network_def``: TorchScript) cannot compile MedSegDiffV2; the failure
    is TorchScript's, in the network's code (not the config or the weights): the reason of the exclusion that
    docs/README.md documents. ``python -m scripts.tools.export`` (torch.export) is the bundle's export
    (test_export.py)."""
    config = str(CONFIGS / "inference.yaml")
    overrides = {f"network_def#{k}": v for k, v in TINY_NET.items()}
    parser = ConfigParser()
    parser.read_config(config)
    parser.update(overrides)
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, tmp_path / "model.pt")
    # TorchScript raises RuntimeError or FrontendError on unsupported code, ValueError on an unsupported annotation
    with pytest.raises((RuntimeError, ValueError, torch.jit.frontend.FrontendError)) as error:
        ckpt_export(
            net_id="network_def",
            filepath=str(tmp_path / "model.ts"),
            ckpt_file=str(tmp_path / "model.pt"),
            meta_file=str(META),
            config_file=config,
            key_in_ckpt="model",
            **overrides,
        )
    assert "scripts/networks/" in str(error.value), str(error.value)[-2000:]
    assert any("jit" in str(entry.path) for entry in error.traceback)  # raised by TorchScript (torch.jit)
    assert not (tmp_path / "model.ts").exists()


# -- code format -------------------------------------------------------------------------------------------------------
# the zoo's settings (its setup.cfg and pyproject.toml); its format job runs black with --skip-magic-trailing-comma
ZOO_SETUP_CFG = """[flake8]
select = B,C,E,F,N,P,T4,W,B9
max_line_length = 120
ignore = E203,E501,E741,W503,W504,C408,N812,B023,B905,B028,B907,C419
per_file_ignores = __init__.py: F401, __main__.py: F401

[isort]
known_first_party = models
profile = black
line_length = 120
"""
ZOO_PYPROJECT = """[tool.black]
line-length = 120
target-version = ['py37', 'py38', 'py39']
"""


@pytest.mark.parametrize("tool", ["isort", "black", "flake8"])
def test_scripts_pass_the_zoo_code_format_check(bundle_cli: BundleCLI, tool: str, tmp_path: Path) -> None:
    (tmp_path / "setup.cfg").write_text(ZOO_SETUP_CFG)
    (tmp_path / "pyproject.toml").write_text(ZOO_PYPROJECT)
    args = {
        "isort": ["--settings-path", str(tmp_path), "--check-only", "--diff"],
        "black": ["--config", str(tmp_path / "pyproject.toml"), "--skip-magic-trailing-comma", "--check", "--diff"],
        "flake8": ["--config", str(tmp_path / "setup.cfg")],
    }[tool]
    run = bundle_cli.python("-m", tool, *args, "scripts", cwd=BUNDLE, timeout=300)
    assert run.returncode == 0, f"{tool} with the zoo's settings:\n{(run.stdout + run.stderr)[-6000:]}"


def test_flake8_with_the_zoo_settings_finds_a_planted_issue(bundle_cli: BundleCLI, tmp_path: Path) -> None:
    """The format check can fail: the zoo's flake8 plugins (pep8-naming, bugbear) are installed and its select list
    reaches them."""
    (tmp_path / "setup.cfg").write_text(ZOO_SETUP_CFG)
    (tmp_path / "bad.py").write_text("def f(Arg=[]):\n    return Arg\n")
    cmd = ["-m", "flake8", "--config", str(tmp_path / "setup.cfg"), str(tmp_path / "bad.py")]
    out = bundle_cli.python(*cmd, timeout=300).stdout
    assert "N803" in out and "B006" in out, out
