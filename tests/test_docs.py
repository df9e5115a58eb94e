"""The user documentation agrees with the code, the configs and the measurements it reports.

- the bundle's README (``bundle/docs/README.md``, the model zoo's place) is at most 200 lines, and it and
  ``metadata.json`` state what the configs run (sizes, channels, classes, sampler, version);
- every figure of ``metadata.json``'s ``eval_metrics`` is the one ``docs/results.md`` reports, and every figure of the
  README comes from ``results.md`` or ``benchmarks.md``;
- ``docs/architecture.md`` maps every module of ``bundle/scripts`` and nothing else;
- every markdown link, every path and every ``scripts.`` name the docs give exists;
- no text file of the repository names an absolute path of a machine or an issue of a tracker.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
DOCS = BUNDLE / "docs"
README = DOCS / "README.md"
RESULTS = DOCS / "results.md"
BENCHMARKS = DOCS / "benchmarks.md"
ARCHITECTURE = DOCS / "architecture.md"
META = CONFIGS / "metadata.json"


def _meta() -> dict:
    return json.loads(META.read_text(encoding="utf-8"))


def _config(*files: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    return parser


def _sections(text: str) -> dict[str, str]:
    """Markdown heading -> the text up to the next heading of any level."""
    parts = re.split(r"^(#{1,6} .*)$", text, flags=re.M)
    return {parts[i].lstrip("#").strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``: rows of cells (the header first, the separator row left out)."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _cell(table: list[list[str]], row: str, column: str) -> str:
    """The cell of the one row whose first cell contains ``row``, in the column headed ``column`` (or the one column
    whose header starts with it)."""
    header = table[0]
    cols = [i for i, h in enumerate(header) if h == column] or [i for i, h in enumerate(header) if h.startswith(column)]
    rows = [r for r in table[1:] if row in r[0]]
    assert len(cols) == 1 and len(rows) == 1, (row, column, header, [r[0] for r in table[1:]])
    return rows[0][cols[0]]


def _number(cell: str) -> float:
    return float(cell.replace("*", "").replace(",", "").split()[0])


def _plain(cell: str) -> str:
    """A README cell's value: without backticks and without a remark in brackets."""
    return re.sub(r"\(.*?\)", "", cell).replace("`", "").strip()


# -- the README and metadata.json against the configs ------------------------------------------------------------------
def test_bundle_readme_is_the_one_readme_and_at_most_200_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"{README.name} has {len(lines)} lines"
    assert not (BUNDLE / "README.md").exists() or len((BUNDLE / "README.md").read_text().splitlines()) <= 10
    assert "bundle/docs/README.md" in (REPO / "README.md").read_text(encoding="utf-8")  # the top-level one points to it


def test_readme_defaults_are_those_of_the_inference_configs() -> None:
    """The README's table of defaults, column by column, against inference.yaml and + inference_volume.yaml."""
    table = next(t for t in _tables(README.read_text(encoding="utf-8")) if t[0][0] == "setting")
    profiles = [_config("inference.yaml"), _config("inference.yaml", "inference_volume.yaml")]
    keys = [_plain(row[0]) for row in table[1:]]
    needed = {"ckpt_path", "roi_size", "image_channels", "num_classes", "patch_size", "prediction_type", "sampler"}
    assert needed | {"num_inference_steps", "ensemble_size", "fusion"} <= set(keys)
    for row in table[1:]:
        key = _plain(row[0])
        for cell, parser in zip(row[1:], profiles, strict=True):
            stated, actual = _plain(cell), parser[key]
            if key == "ckpt_path":  # an expression: $@bundle_root + '/models/...'
                assert actual.rstrip("'").endswith("/" + stated), (key, stated, actual)
            else:
                assert stated == ("null" if actual is None else str(actual)), (key, stated, actual)


def test_readme_states_the_version_of_the_metadata() -> None:
    stated = re.findall(r"version (\d+\.\d+\.\d+)", README.read_text(encoding="utf-8"))
    assert stated == [_meta()["version"]]


def test_metadata_describes_what_the_inference_config_runs() -> None:
    meta, parser = _meta(), _config("inference.yaml")
    fmt = meta["network_data_format"]
    roi, classes = [parser["roi_size"]] * 2, parser["num_classes"]
    image, x, pred = fmt["inputs"]["image"], fmt["inputs"]["x"], fmt["outputs"]["pred"]
    assert image["spatial_shape"] == x["spatial_shape"] == pred["spatial_shape"] == roi
    assert image["num_channels"] == parser["image_channels"] and x["num_channels"] == pred["num_channels"] == classes
    assert fmt["inputs"]["timesteps"]["value_range"] == [0, parser["num_train_timesteps"] - 1]
    # the network's output is its estimate of x0 (prediction_type: sample), a mask scaled to [-1, 1]
    assert parser["prediction_type"] == "sample" and pred["value_range"] == [-1, 1] and pred["dtype"] == "float32"
    post = fmt["post_processed_outputs"]["pred"]  # the fused label map, in the input's size
    assert post["num_channels"] == 1 and post["value_range"] == [0, classes] and post["dtype"] == "uint8"
    for name, tensor in [*fmt["inputs"].items(), *fmt["outputs"].items(), *fmt["post_processed_outputs"].items()]:
        if "channel_def" in tensor:  # one entry per channel
            assert sorted(tensor["channel_def"]) == [str(c) for c in range(tensor["num_channels"])], name
    sampler = {"ddpm": "ancestral DDPM respaced to", "ddim": "DDIM with"}[parser["sampler"]]
    stated = f"{sampler} {parser['num_inference_steps']} steps, {parser['ensemble_size']} samples"
    assert f"{stated}, {parser['fusion'].upper()}" in meta["description"]
    labels = yaml.safe_load((CONFIGS / "monailabel.yaml").read_text())["monailabel_labels"]
    for profile in ("image", "volume"):  # the label names MONAI Label serves
        assert all(f"{v} = {k}" in meta["pred_classes"] for k, v in labels[profile].items()), profile


def test_metadata_states_how_long_each_baseline_trained() -> None:
    """The UNet beside the shipped ISIC weights had less time than V2; the metadata must not call it the same."""
    text = json.dumps(_meta())
    assert "trained for the same time" not in text
    source = _meta()["eval_metrics"]["source"]
    assert "120 CPU minutes" in source and "284 CPU minutes" in source


# -- figures against results.md and benchmarks.md ----------------------------------------------------------------------
SHIPPED = "Shipped weights on held-out cases"
ISIC, HIPPO, UNCERTAINTY = "ISIC 2018 Task 1", "MSD Task04 hippocampus", "Uncertainty of the shipped weights"
# eval_metrics key -> (section of results.md whose first table holds it, row, column)
FIGURES = {
    "mean_dice": (ISIC, "MedSegDiff-V2", "Dice"),
    "mean_iou": (ISIC, "MedSegDiff-V2", "IoU"),
    "hd95": (ISIC, "MedSegDiff-V2", "HD95"),
    "ged": (ISIC, "MedSegDiff-V2", "GED"),
    "dice_ci95_width": (ISIC, "MedSegDiff-V2", "Dice CI width"),
    "image_reliance": (ISIC, "MedSegDiff-V2", "image reliance"),
    "anchor_dice": (ISIC, "anchor alone", "Dice"),
    "unet_mean_dice": (ISIC, "UNet baseline, InstanceNorm", "Dice"),
    "no_image_prior_dice": (ISIC, "no-image prior", "Dice"),
    "error_auroc": (UNCERTAINTY, "ISIC", "V2 error AUROC"),
    "ece": (UNCERTAINTY, "ISIC", "V2 ECE"),
    "hippocampus_mean_dice": (HIPPO, "MedSegDiff-V2", "mean Dice"),
    "hippocampus_mean_iou": (HIPPO, "MedSegDiff-V2", "IoU"),
    "hippocampus_hd95": (HIPPO, "MedSegDiff-V2", "HD95"),
    "hippocampus_image_reliance": (HIPPO, "MedSegDiff-V2", "image reliance"),
    "hippocampus_anchor_dice": (HIPPO, "anchor alone", "mean Dice"),
    "hippocampus_unet_mean_dice": (HIPPO, "UNet baseline, 2.5D", "mean Dice"),
    "hippocampus_no_image_prior_dice": (HIPPO, "no-image prior", "mean Dice"),
    "hippocampus_error_auroc": (UNCERTAINTY, "hippocampus", "V2 error AUROC"),
    "hippocampus_ece": (UNCERTAINTY, "hippocampus", "V2 ECE"),
}


def _results_table(section: str) -> list[list[str]]:
    text = RESULTS.read_text(encoding="utf-8")
    assert f"## {SHIPPED}" in text
    matches = [body for head, body in _sections(text).items() if head.startswith(section)]
    assert len(matches) == 1, section
    return _tables(matches[0])[0]


def test_every_figure_of_the_metadata_is_the_one_results_md_reports() -> None:
    metrics = _meta()["eval_metrics"]
    assert sorted(k for k, v in metrics.items() if isinstance(v, (int, float))) == sorted(FIGURES)
    for key, (section, row, column) in FIGURES.items():
        assert metrics[key] == _number(_cell(_results_table(section), row, column)), key
    results = RESULTS.read_text(encoding="utf-8")
    for number in re.findall(r"\d+(?:\.\d+)?", metrics["source"]):  # durations, case counts, steps
        assert number in results, number


def _numbers(text: str) -> set[str]:
    """The decimal figures of ``text`` (not those of a name such as Apache-2.0)."""
    return set(re.findall(r"(?<![\w.-])\d+(?:,\d{3})*\.\d+", text))


def test_every_figure_of_the_readme_comes_from_results_or_benchmarks() -> None:
    text = re.sub(r"\d+\.\d+\.\d+", "", README.read_text(encoding="utf-8"))  # versions are not figures
    measured = _numbers(RESULTS.read_text(encoding="utf-8")) | _numbers(BENCHMARKS.read_text(encoding="utf-8"))
    assert sorted(_numbers(text) - measured) == []
    metrics = _meta()["eval_metrics"]
    tables = _tables(_sections(README.read_text(encoding="utf-8"))["Results"])
    isic, hippo = (next(t for t in tables if t[0][0].startswith(name)) for name in ("ISIC", "MSD hippocampus"))
    assert _number(_cell(isic, "shipped `models/model.pt`: **MedSegDiff-V2", "Dice")) == metrics["mean_dice"]
    assert _number(_cell(isic, "shipped `models/model.pt`: its Condition", "Dice")) == metrics["anchor_dice"]
    assert _number(_cell(isic, "UNet baseline, InstanceNorm", "Dice")) == metrics["unet_mean_dice"]
    assert _number(_cell(hippo, "**MedSegDiff-V2", "mean Dice")) == metrics["hippocampus_mean_dice"]
    assert _number(_cell(hippo, "no-image prior", "mean Dice")) == metrics["hippocampus_no_image_prior_dice"]
    for table in (isic, hippo):  # the cost of each figure is stated
        assert any(h.startswith("denoiser calls") for h in table[0])


def test_results_md_keeps_the_same_budget_and_uncertainty_sections() -> None:
    sections = _sections(RESULTS.read_text(encoding="utf-8"))
    assert "Same budget, 2 hours: MSD hippocampus" in sections
    assert "Same budget, 5.4 hours: ISIC 2018 at 128x128" in sections
    assert "Uncertainty maps" in sections


# -- architecture.md's map of scripts/ ---------------------------------------------------------------------------------
def test_architecture_maps_every_module_of_scripts() -> None:
    section = next(b for h, b in _sections(ARCHITECTURE.read_text(encoding="utf-8")).items() if "bundle/scripts/" in h)
    mapped, folder = set(), None
    for line in section.splitlines():
        if m := re.match(r"- `scripts/(\w+)/`", line):
            folder = m.group(1)
        elif m := re.match(r"  - `(\w+\.py)`", line):
            assert folder, line
            mapped.add(f"{folder}/{m.group(1)}")
    on_disk = {
        p.relative_to(BUNDLE / "scripts").as_posix()
        for p in (BUNDLE / "scripts").glob("*/*.py")
        if p.name != "__init__.py"
    }
    assert sorted(on_disk - mapped) == [] and sorted(mapped - on_disk) == []


def test_no_doc_says_the_default_denoiser_predicts_the_noise() -> None:
    """The network's output is read as x0 by default (prediction_type: sample in the configs)."""
    assert _config("train.yaml")["prediction_type"] == _config("inference.yaml")["prediction_type"] == "sample"
    texts = [*DOCS.glob("*.md"), *(BUNDLE / "scripts").rglob("*.py"), META]
    pattern = re.compile(r"(?i)predicts? (the )?(noise|eps)\b|-> eps\b")
    assert [str(p.relative_to(REPO)) for p in texts if pattern.search(p.read_text(encoding="utf-8"))] == []


# -- links and paths ---------------------------------------------------------------------------------------------------
def _repo_files() -> list[Path]:
    """Tracked files and new files git does not ignore (the repository's text as it will be committed)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / f for f in out.splitlines() if (REPO / f).is_file()]


def _text_files() -> list[Path]:
    files = []
    for path in _repo_files():
        head = path.read_bytes()[:8192]
        if b"\0" not in head and path.suffix not in {".png", ".jpg", ".gz", ".pt", ".zip"}:
            files.append(path)
    return files


def _docs() -> list[Path]:
    return [p for p in _repo_files() if p.suffix == ".md"]


def test_markdown_links_resolve() -> None:
    broken = []
    for doc in _docs():
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert broken == []


PATH = re.compile(r"(?<![\w./<-])((?:bench|bundle|configs|scripts|docs|tests|tools|reports|models|data)/[\w./-]*\w)")


def test_paths_the_docs_name_exist() -> None:
    """Every path a doc names (in a command or in the text), from the repository root, the bundle root or the doc's
    folder; run folders (``bundle/runs/...``) are what the commands write."""
    missing = []
    for doc in _docs():
        for path in set(PATH.findall(doc.read_text(encoding="utf-8"))) - {""}:
            if path.startswith("bundle/runs/"):
                continue
            if not any((base / path).exists() for base in (REPO, BUNDLE, doc.parent)):
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert sorted(missing) == []


def _defines(module: Path, name: str) -> bool:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return True
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def test_scripts_names_the_docs_give_exist() -> None:
    """``scripts.<stage>.<module>[.<name>]`` in the docs and in large_files.yml's comments: the module exists and
    defines the name."""
    missing = []
    for doc in [*_docs(), BUNDLE / "large_files.yml"]:
        for dotted in set(re.findall(r"\bscripts(?:\.\w+)+", doc.read_text(encoding="utf-8"))):
            parts, path = dotted.split("."), BUNDLE
            while parts and ((path / parts[0]).is_dir() or (path / f"{parts[0]}.py").is_file()):
                path = path / parts.pop(0)
            module = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            if len(parts) > 1 or (parts and not _defines(module, parts[0])):
                missing.append(f"{doc.relative_to(REPO)}: {dotted}")
    assert sorted(missing) == []


# -- no machine paths, no issue references -----------------------------------------------------------------------------
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:" + "|".join(["work", "tmp", "root", "home"]) + r")/")
ISSUE = re.compile(r"(?i)\bissues?\s*#?\d+|(?<![\w&#/])#\d+\b")


@pytest.mark.parametrize("pattern", [MACHINE_PATH, ISSUE], ids=["absolute machine path", "issue reference"])
def test_no_text_file_names_a_machine_path_or_an_issue(pattern: re.Pattern) -> None:
    hits = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert hits == []
