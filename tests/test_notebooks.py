"""The notebooks run top to bottom on generated data with a random-init ViT-Tiny."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# name -> files the notebook must have written under its WORK folder
EXPECTED = {
    "01_mask_visualisation": ["panels.png", "overlay.png", "per_class_iou.png"],
    "02_bank_size_sweep": ["sweep/miou_vs_bank_size.png", "sweep/sweep.json"],
    "03_few_shot": ["fewshot/fewshot.png", "fewshot/fewshot.json"],
}


def test_every_notebook_is_covered():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


def test_notebooks_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for filename, make in generator.NOTEBOOKS.items():
        stored = nbformat.read(NOTEBOOKS / filename, as_version=4)
        assert [c.source for c in stored.cells] == [c.source for c in make().cells], (
            f"{filename} differs from notebooks/make_notebooks.py: edit the generator and rerun it"
        )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, tmp_path):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert notebook.cells[0].cell_type == "markdown" and "real data" in notebook.cells[0].source
    # The kernel's working directory is tmp_path, so everything the notebook writes lands there.
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    work = tmp_path / "runs" / "notebooks" / name  # runs/ is git-ignored
    assert not (tmp_path / "segfungi_notebooks").exists()
    for relative in EXPECTED[name]:
        assert (work / relative).stat().st_size > 0, relative
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the notebook shows no picture"
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "IProgress not found" not in printed and "TqdmWarning" not in printed
    # Each notebook says what it ran and, for a random-init run, how to see FUNGI's gain.
    assert "vit_tiny_patch16_224, random init (seed 0), no pretrained weights" in printed
    assert "FUNGI's gain needs pretrained weights" in printed
