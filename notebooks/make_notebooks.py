"""Writes the notebooks of this folder (run `python notebooks/make_notebooks.py`).

The notebooks are generated, without outputs, so that their code lives in one
reviewable place; edit the cells here and rerun. tests/test_notebooks.py executes
them top to bottom on generated data with a random-init ViT-Tiny.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

REAL_DATA = """
**What this run is.** As written, the notebook generates a small VOC-layout dataset
and uses a **random-init ViT-Tiny/16**, so it runs anywhere in a minute or two. That
checks the pipeline; it does not measure FUNGI: with a backbone that has learned
nothing, FUNGI features can score *below* plain embeddings. **FUNGI's gain needs
pretrained weights** (the paper: DINO ViT-S/16 on Pascal VOC, bank 1024×10², mIoU 37.2
with embeddings, 50.7 with FUNGI). With internet, `segfungi demo --pretrained --backbone
vit_small_patch16_224.dino` shows it on the demo data, and the settings below on real data.

**Running it on real data.** Set in the next cell:

* `DATA_ROOT` to the dataset root: Pascal VOC 2012 (the folder holding
  `VOCdevkit/VOC2012/` with `JPEGImages/`, `SegmentationClass/`, `ImageSets/Segmentation/`,
  plus `SegmentationClassAug/` and `trainaug.txt` for trainaug) or ADE20K (the folder
  holding `ADEChallengeData2016/`),
* `CONFIG` to a preset from `configs/` ({presets}): it sets the dataset, its splits and
  the DINO backbone,
* `WEIGHTS` to a local checkpoint (timm, original DINO layout or safetensors), or leave
  it `None` to let the preset download the hub weights (needs internet),
* and the sizes: {sizes}.

Everything the notebook writes goes under `WORK` (`runs/notebooks/<notebook>`, relative
to the working directory; `runs/` is git-ignored).
"""

SETUP = '''from pathlib import Path

from IPython.display import Image, display

from segfungi.config import load_config

DATA_ROOT = None    # dataset root; None = generate a small demo dataset under WORK
CONFIG = "demo"     # preset in configs/, e.g. {example}
WEIGHTS = None      # local checkpoint; None = the preset's choice (demo: random init)
WORK = Path("runs") / "notebooks" / "{name}"
{sizes}


def settings_for(**sections):
    """The preset, pointed at the data and weights above, plus this notebook's sizes."""
    overrides = [{{"data": {{"root": str(root)}}}}, *({{k: v}} for k, v in sections.items())]
    if WEIGHTS:
        overrides.append({{"backbone": {{"weights": str(WEIGHTS), "random_init": False, "pretrained": False}}}})
    return load_config(CONFIG, overrides)
'''

DEMO_DATA = '''if DATA_ROOT is None:
    from segfungi.data.demo import write_demo_dataset

    root = write_demo_dataset(WORK / "data", layout="voc", n_images=TRAIN_IMAGES + VAL_IMAGES,
                              n_val=VAL_IMAGES, seed=0)
else:
    root = Path(DATA_ROOT)
root'''


RUN_NOTE = '''if not (settings["backbone"]["weights"] or settings["backbone"]["pretrained"]):
    print("Random-init backbone: this checks the pipeline, it does not measure FUNGI (which can score\\n"
          "below embeddings here). FUNGI's gain needs pretrained weights; with internet:\\n"
          "  segfungi demo --pretrained --backbone vit_small_patch16_224.dino\\n"
          "or CONFIG = 'voc_vits16' (DINO ViT-S/16) with DATA_ROOT set to Pascal VOC.")'''


def notebook(name: str, title: str, presets: str, sizes_text: str, example: str, sizes_code: str,
             cells: list) -> nbformat.NotebookNode:
    intro = new_markdown_cell(f"# {title}\n" + REAL_DATA.format(presets=presets, sizes=sizes_text))
    setup = new_code_cell(SETUP.format(name=name, example=example, sizes=sizes_code.strip()))
    nb = new_notebook(cells=[intro, setup, new_code_cell(DEMO_DATA), *cells])
    for number, cell in enumerate(nb.cells):
        cell.id = f"cell-{number:02d}"  # stable ids: regenerating gives no diff
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def mask_visualisation() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "## Build a bank\n"
            "A FUNGI bank; its `support/` folder is the plain-embeddings bank of the same\n"
            "sampling, so one build gives both feature kinds."
        ),
        new_code_cell(
            "from segfungi.api import build_bank\nfrom segfungi.bank import SUPPORT_DIR\n\n"
            'settings = settings_for(bank={"features": "fungi", "size": BANK_SIZE},\n'
            '                        eval={"max_images": VAL_IMAGES})\n'
            'fungi_bank = build_bank(settings, WORK / "bank", resume=True)\n'
            "banks = {\"embeddings\": fungi_bank / SUPPORT_DIR, \"FUNGI\": fungi_bank}\n"
            "banks"
        ),
        new_markdown_cell(
            "## Predict validation images\n"
            "`Segmenter.predict` takes an image of any size and returns its class-id mask at\n"
            "that size."
        ),
        new_code_cell(
            "from segfungi.components import open_dataset\n"
            "from segfungi.inference.segmenter import Segmenter\n\n"
            "segmenters = {kind: Segmenter.from_settings(path, settings) for kind, path in banks.items()}\n"
            'val = open_dataset(settings, settings["data"]["val_split"])\n'
            "samples = [val[i] for i in range(min(SHOWN_IMAGES, len(val)))]\n"
            "predictions = {kind: [s.predict(sample.image) for sample in samples]\n"
            "               for kind, s in segmenters.items()}"
        ),
        new_markdown_cell(
            "## Image, ground truth, embeddings and FUNGI side by side\n"
            "The legend lists only the classes that appear in the panels."
        ),
        new_code_cell(
            "from segfungi.inference.viz import describe_banks, overlay_with_legend, plot_prediction_panels\n\n"
            "bank = segmenters[\"FUNGI\"].bank\n"
            "context = describe_banks([fungi_bank])   # backbone, weights, dataset, images: from the manifest\n"
            "print(context)\n"
            + RUN_NOTE + "\n"
            "panels = plot_prediction_panels(\n"
            "    [s.image for s in samples],\n"
            '    {"ground truth": [s.mask for s in samples], **predictions},\n'
            '    bank.classes, bank.palette, WORK / "panels.png", row_titles=[s.id for s in samples],\n'
            '    title=f"validation predictions, bank of {bank.num_patches:,} patches", context=context,\n'
            ")\n"
            "display(Image(filename=panels))"
        ),
        new_markdown_cell("One prediction as an overlay with its legend, at the image's own size:"),
        new_code_cell(
            "import PIL.Image\n\n"
            'picture = overlay_with_legend(samples[0].image, predictions["FUNGI"][0], bank.classes, bank.palette,\n'
            '                              caption=f"FUNGI prediction of {samples[0].id}\\n{context}")\n'
            'PIL.Image.fromarray(picture).save(WORK / "overlay.png")\n'
            'display(Image(filename=WORK / "overlay.png"))'
        ),
        new_markdown_cell(
            "## Per-class IoU on the validation images\n"
            "A diamond at 0 is a class that was in the ground truth and missed; a grey hatched\n"
            "band marked *absent* is a class in neither the ground truth nor the predictions."
        ),
        new_code_cell(
            "from segfungi.inference.evaluation import evaluate, results_table\n"
            "from segfungi.inference.viz import plot_per_class_iou\n\n"
            "results = {kind: evaluate(path, settings, progress=False) for kind, path in banks.items()}\n"
            'print(results_table(results["FUNGI"]))\n'
            'picture = plot_per_class_iou(results, WORK / "per_class_iou.png",\n'
            '                             title=f"per-class IoU, bank of {bank.num_patches:,} patches",\n'
            '                             context=describe_banks([fungi_bank], results["FUNGI"]["images"]))\n'
            "display(Image(filename=picture))"
        ),
    ]
    return notebook(
        "01_mask_visualisation", "Mask visualisation: embeddings vs FUNGI",
        presets="voc_vits16, voc_vitb16, ade20k_vits16, ade20k_vitb16",
        sizes_text="`BANK_SIZE` (the paper uses 1024×10², ×10³ and ×10⁴ patches) and `VAL_IMAGES`\n"
                   "  (None evaluates the whole validation split)",
        example='"voc_vits16"',
        sizes_code="TRAIN_IMAGES, VAL_IMAGES = 8, 4    # demo dataset; VAL_IMAGES also caps the evaluation\n"
                   "BANK_SIZE = 2048                   # patches in the bank\n"
                   "SHOWN_IMAGES = 3                   # rows of the panel figure",
        cells=cells,
    )


def bank_size_sweep() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "## Sweep\n"
            "One FUNGI bank per size (its `support/` is the embeddings bank of that size),\n"
            "each evaluated with both feature kinds. Banks are kept under `WORK`, so a rerun\n"
            "only evaluates."
        ),
        new_code_cell(
            "from segfungi.experiments.sweep import run_sweep, sweep_table\n\n"
            'settings = settings_for(sweep={"sizes": SIZES, "features": ["embeddings", "fungi"],\n'
            '                               "out": str(WORK / "sweep")},\n'
            '                        eval={"max_images": VAL_IMAGES})\n'
            "rows = run_sweep(settings, progress=False)\n"
            "print(sweep_table(rows))"
        ),
        new_markdown_cell(
            "## What was run\n"
            "Read from the banks' manifests: the backbone and its weights, the images, and the\n"
            "bank sizes actually built (a bank holds at most every patch of every training image)."
        ),
        new_code_cell(
            "from segfungi.bank import MemoryBank\n"
            "from segfungi.inference.viz import describe_banks\n\n"
            'print(describe_banks([r["bank"] for r in rows], [r["images"] for r in rows]))\n'
            'built = sorted({MemoryBank(r["bank"], verify="off").num_patches for r in rows})\n'
            'print("bank sizes built:", ", ".join(f"{size:,}" for size in built))\n'
            + RUN_NOTE
        ),
        new_markdown_cell(
            "## mIoU against bank size\n"
            "Ticks sit at the sizes built; the y axis starts at 0."
        ),
        new_code_cell('display(Image(filename=WORK / "sweep" / "miou_vs_bank_size.png"))'),
        new_markdown_cell("The rows as a table (also in `sweep.csv` / `sweep.json`):"),
        new_code_cell(
            "for row in rows:\n"
            "    print(f\"{row['features']:>10}  {row['bank_size']:>8}  mIoU {100 * row['miou']:5.1f}  \"\n"
            "          f\"{row['eval_images_per_second']:.2f} img/s\")"
        ),
    ]
    return notebook(
        "02_bank_size_sweep", "mIoU against memory-bank size",
        presets="voc_vits16, voc_vitb16, ade20k_vits16, ade20k_vitb16",
        sizes_text="`SIZES` (the paper uses [102400, 1024000, 10240000]) and `VAL_IMAGES`\n"
                   "  (None evaluates the whole validation split)",
        example='"voc_vits16"',
        sizes_code="TRAIN_IMAGES, VAL_IMAGES = 8, 4    # demo dataset; VAL_IMAGES also caps the evaluation\n"
                   "SIZES = [512, 2048, 8192]          # bank sizes (8 images x 1024 patches at most)",
        cells=cells,
    )


def few_shot() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "## Few-shot trials\n"
            "Each (fraction, seed) trial draws its subset of the training split with the seed,\n"
            "builds a bank with the few-shot settings (8 augmentation epochs in the paper;\n"
            "k = 90, T = 0.1, ScaNN 256 leaves searched, reorder 1800) and evaluates it for\n"
            "embeddings and FUNGI. Those live in bank.*, eval.* and index.* (the fewshot_*\n"
            "presets set them); here they are given explicitly, with this notebook's sizes."
        ),
        new_code_cell(
            "from segfungi.experiments.fewshot import fewshot_table, run_fewshot\n\n"
            'settings = settings_for(fewshot={"fractions": FRACTIONS, "seeds": SEEDS, "out": str(WORK / "fewshot")},\n'
            '                        bank={"aug_epochs": AUG_EPOCHS, "size": BANK_SIZE},\n'
            '                        eval={"max_images": VAL_IMAGES, "k": 90, "temperature": 0.1},\n'
            '                        index={"num_leaves_to_search": 256, "reorder": 1800})\n'
            "report = run_fewshot(settings, progress=False)\n"
            'print(fewshot_table(report["summary"]))'
        ),
        new_markdown_cell(
            "## What was run\n"
            "Read from the trials' banks: the backbone and its weights, the training images of\n"
            "each subset, and the bank sizes actually built."
        ),
        new_code_cell(
            "from segfungi.bank import MemoryBank\n"
            "from segfungi.inference.viz import describe_banks\n\n"
            'trials = report["trials"]\n'
            'print(describe_banks([t["bank"] for t in trials], [t["eval_images"] for t in trials]))\n'
            'built = sorted({MemoryBank(t["bank"], verify="off").num_patches for t in trials})\n'
            'print("bank sizes built:", ", ".join(f"{size:,}" for size in built))\n'
            + RUN_NOTE
        ),
        new_markdown_cell("## mIoU mean ± std over seeds, per training subset"),
        new_code_cell('display(Image(filename=WORK / "fewshot" / "fewshot.png"))'),
        new_markdown_cell("Every trial (also in `fewshot/fewshot.json`):"),
        new_code_cell(
            'for trial in report["trials"]:\n'
            "    print(f\"{trial['subset']:>6}  seed {trial['seed']}  {trial['features']:>10}  \"\n"
            "          f\"{trial['images']:>3} images  bank {trial['bank_size']:>6}  mIoU {100 * trial['miou']:5.1f}\")"
        ),
    ]
    return notebook(
        "03_few_shot", "Few-shot segmentation (Hummingbird protocol)",
        presets="fewshot_voc_vits16, fewshot_voc_vitb16, fewshot_ade20k_vits16, fewshot_ade20k_vitb16",
        sizes_text="`FRACTIONS = [1 / 128, 1 / 64]`, `AUG_EPOCHS = 8` and `BANK_SIZE = 2048 * 10**4` as in the paper,\n"
                   "  `SEEDS` as many as you can afford, `VAL_IMAGES = None` for the whole validation split",
        example='"fewshot_voc_vits16"',
        sizes_code="TRAIN_IMAGES, VAL_IMAGES = 12, 4   # demo dataset; VAL_IMAGES also caps the evaluation\n"
                   "FRACTIONS = [1 / 6, 1 / 3]         # of the training split (paper: 1/128, 1/64)\n"
                   "SEEDS = [0, 1]\n"
                   "AUG_EPOCHS = 2                     # paper: 8\n"
                   "BANK_SIZE = 2048                   # at most; paper: 2048 x 10^4, i.e. every patch",
        cells=cells,
    )


NOTEBOOKS = {
    "01_mask_visualisation.ipynb": mask_visualisation,
    "02_bank_size_sweep.ipynb": bank_size_sweep,
    "03_few_shot.ipynb": few_shot,
}


def main() -> None:
    for filename, make in NOTEBOOKS.items():
        nb = make()
        nbformat.validate(nb)
        nbformat.write(nb, HERE / filename)
        print(f"wrote {HERE / filename}")


if __name__ == "__main__":
    main()
