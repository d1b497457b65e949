"""Published numbers: the shipped files are well-formed and hold the sources' numbers, and
lookups / comparisons with a run give the right entry or the right reason."""

import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from segfungi.infra.errors import ConfigError
from segfungi.published import (
    FEWSHOT_BANK_SIZE,
    FEWSHOT_FRACTIONS,
    FULL_BANK_SIZES,
    Cell,
    Run,
    format_bank_size,
    load_published,
    lookup,
    published_entries,
    published_for,
)

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO.parent / "shared" / "reference" / "fungi-paper.md"  # beside a checkout, where present
DINO_S, DINO_B = "vit_small_patch16_224.dino", "vit_base_patch16_224.dino"
DINOV2_S, DINOV2_B = "vit_small_patch14_dinov2.lvd142m", "vit_base_patch14_dinov2.lvd142m"
FULL = FULL_BANK_SIZES  # 1024×10², 10³, 10⁴
HUB = "timm-hub:timm/vit_small_patch16_224.dino"

# Read from the FUNGI paper (arXiv 2407.10964): Table 3 (VOC) and Table 7 (ADE20K), memory
# bank 1024×10², 10³, 10⁴; Table 4 (few-shot) VOC 1/128, 1/64 then ADE20K 1/128, 1/64.
PAPER_FULL = {
    ("voc", DINO_S, "embeddings"): (37.2, 43.1, 46.6), ("voc", DINO_S, "fungi"): (50.7, 56.3, 58.0),
    ("voc", DINO_B, "embeddings"): (44.9, 50.8, 55.7), ("voc", DINO_B, "fungi"): (62.1, 66.1, 67.0),
    ("ade20k", DINO_S, "embeddings"): (11.4, 14.5, 17.0), ("ade20k", DINO_S, "fungi"): (16.1, 20.0, 22.3),
    ("ade20k", DINO_B, "embeddings"): (14.5, 18.3, 20.8), ("ade20k", DINO_B, "fungi"): (19.2, 23.5, 25.2),
}
PAPER_FEWSHOT = {
    (DINO_S, "embeddings"): (26.3, 31.8, 8.8, 10.0), (DINO_S, "fungi"): (29.1, 34.0, 10.2, 12.3),
    (DINO_B, "embeddings"): (32.2, 39.0, 9.3, 11.3), (DINO_B, "fungi"): (38.0, 46.8, 11.7, 13.7),
}
# open-hummingbird-eval README (2.0.0), Pascal VOC, memory 1024×10², 10³, 10⁴.
HUMMINGBIRD = {DINO_S: (37.2, 43.1, 46.6), DINO_B: (44.9, 50.8, 55.7),
               DINOV2_S: (70.2, 74.9, 77.0), DINOV2_B: (69.1, 74.6, 76.9)}


def of_source(entries, name):
    return [e for e in entries if e.source == name]


def test_every_entry_is_well_formed():
    import timm

    from segfungi.data import DATASETS

    entries = published_entries()
    pretrained = set(timm.list_models(pretrained=True))
    labels = {}
    for e in entries:
        assert e.model in pretrained, e.model
        assert labels.setdefault(e.model, e.label) == e.label  # one name per model across sources
        assert e.dataset in DATASETS and e.features in ("embeddings", "fungi")
        assert isinstance(e.miou, float) and 0 < e.miou < 100
        assert e.source and e.table and e.citation and e.settings_note and e.url.startswith("https://")
        assert isinstance(e.image_size, int) and e.train_split in ("trainaug", "training")
        if e.cell.fraction is None:
            assert e.cell.bank_size in FULL_BANK_SIZES and e.cell.protocol == "full"
        else:
            assert e.cell.fraction in FEWSHOT_FRACTIONS and e.cell.protocol == "fewshot"
            assert (e.cell.bank_size, e.cell.aug_epochs) == (FEWSHOT_BANK_SIZE, 8)
    assert {e.source for e in entries} == {"FUNGI paper", "open-hummingbird-eval README"}
    assert len(entries) == len(PAPER_FULL) * 3 + len(PAPER_FEWSHOT) * 4 + len(HUMMINGBIRD) * 3


def test_the_fungi_papers_numbers():
    paper = of_source(published_entries(), "FUNGI paper")
    full = {}
    for e in (e for e in paper if e.cell.fraction is None):
        full.setdefault((e.dataset, e.model, e.features), {})[e.cell.bank_size] = e.miou
        assert e.table == ("Table 3" if e.dataset == "voc" else "Table 7")
        assert (e.cell.aug_epochs, e.image_size) == (1, 512)
        assert e.train_split == ("trainaug" if e.dataset == "voc" else "training")
    assert {key: tuple(row[size] for size in FULL) for key, row in full.items()} == PAPER_FULL
    fewshot = {}
    for e in (e for e in paper if e.cell.fraction is not None):
        fewshot.setdefault((e.model, e.features), {})[(e.dataset, e.cell.fraction)] = e.miou
        assert e.table == "Table 4"
    columns = [("voc", Fraction(1, 128)), ("voc", Fraction(1, 64)), ("ade20k", Fraction(1, 128)),
               ("ade20k", Fraction(1, 64))]
    assert {key: tuple(row[c] for c in columns) for key, row in fewshot.items()} == PAPER_FEWSHOT
    assert "2048×10^4, 8 augmentation epochs, k 90" in next(e for e in paper if e.cell.fraction).settings_note


def test_open_hummingbird_evals_numbers_and_settings():
    readme = of_source(published_entries(), "open-hummingbird-eval README")
    rows = {}
    for e in readme:
        rows.setdefault(e.model, {})[e.cell.bank_size] = e.miou
        assert (e.dataset, e.features, e.cell.aug_epochs, e.train_split) == ("voc", "embeddings", 2, "trainaug")
        assert e.image_size == (504 if "dinov2" in e.model else 512)
        assert "2 augmentation epochs" in e.settings_note and f"{e.image_size}x{e.image_size}" in e.settings_note
    assert {model: tuple(row[size] for size in FULL) for model, row in rows.items()} == HUMMINGBIRD


def paper_table_rows(text: str, table: int) -> list[list[str]]:
    """The tab-separated rows of a table of the paper's text, from its caption on."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"Table {table}:"))
    return [line.split("\t") for line in lines[start + 1: start + 14]
            if re.match(r"(DINO )?ViT-[SB]/16\t", line)]


@pytest.mark.skipif(not PAPER.is_file(), reason="the paper's text is not beside this checkout")
def test_the_entries_equal_the_papers_own_tables():
    """The same numbers, parsed from the paper's text rather than typed in."""
    text = PAPER.read_text(encoding="utf-8")
    models = {"ViT-S/16": DINO_S, "ViT-B/16": DINO_B}
    kinds = {"Embeddings": "embeddings", "Emb.": "embeddings", "FUNGI": "fungi"}
    seen = 0
    for table, dataset in ((3, "voc"), (7, "ade20k")):
        for name, kind, *cells in paper_table_rows(text, table):
            values = [float(re.match(r"\d+\.\d", c).group()) for c in cells]
            for size, value in zip(FULL, values, strict=True):
                (entry,) = lookup(models[name.removeprefix("DINO ")], dataset, kinds[kind], Cell.full(size),
                                  entries=tuple(of_source(published_entries(), "FUNGI paper")))
                assert entry.miou == value
                seen += 1
    for name, kind, decoder, *cells in paper_table_rows(text, 4):
        assert decoder == "NN"
        values = [float(re.match(r"\d+\.\d", c).group()) for c in cells]
        columns = [("voc", "1/128"), ("voc", "1/64"), ("ade20k", "1/128"), ("ade20k", "1/64")]
        for (dataset, fraction), value in zip(columns, values, strict=True):
            (entry,) = lookup(models[name], dataset, kinds[kind], Cell.fewshot(fraction))
            assert entry.miou == value
            seen += 1
    assert seen == 8 * 3 + 4 * 4


def test_lookup_returns_every_source_of_a_cell():
    both = lookup(DINO_S, "voc", "embeddings", Cell.full(102400))
    assert [(e.source, e.miou, e.cell.aug_epochs) for e in both] == [
        ("FUNGI paper", 37.2, 1), ("open-hummingbird-eval README", 37.2, 2)]
    assert [e.miou for e in lookup(DINO_B, "voc", "fungi", Cell.full(10240000))] == [67.0]
    assert [e.miou for e in lookup(DINO_S, "ade20k", "fungi", Cell.fewshot(0.015625))] == [12.3]
    assert [e.miou for e in lookup(DINOV2_B, "voc", "embeddings", Cell.full(1024000))] == [74.6]
    assert lookup(DINO_S, "voc", "fungi", Cell.full(4096)) == []
    assert lookup(DINO_S, "voc", "fungi", Cell.fewshot("1/8")) == []


def run(model=DINO_S, weights=HUB, dataset="voc", features="fungi", cell=Cell.full(102400), **settings):
    return Run(model, weights, dataset, features, cell, **settings)


def test_a_run_with_the_papers_settings_gets_the_paper_number_and_no_note():
    shown = published_for(run(image_size=512, train_split="trainaug"))
    assert (shown.entry.miou, shown.entry.reference, shown.note) == (50.7, "FUNGI paper, Table 3", "")
    fewshot = published_for(run(dataset="ade20k", features="embeddings", cell=Cell.fewshot(0.0078125),
                                model=DINO_B, weights="timm-hub:timm/vit_base_patch16_224.dino"))
    assert (fewshot.entry.miou, fewshot.note) == (9.3, "")


def test_local_weights_are_compared_by_name_and_the_note_says_so():
    shown = published_for(run(weights="file:dino_deitsmall16_pretrain.pth:sha256:0123456789abcdef"))
    assert shown.entry.miou == 50.7
    assert shown.note == ("published for DINO ViT-S/16 weights (vit_small_patch16_224.dino); "
                          "this run's weights: dino_deitsmall16_pretrain.pth")


def test_a_weights_id_of_no_known_form_is_shown_as_it_is():
    """Read with WeightsSource.parse: an id of no known form is neither random nor a hub's."""
    shown = published_for(run(weights="random-init-ish"))
    assert shown.entry.miou == 50.7
    assert shown.note.endswith("this run's weights: random-init-ish")
    for weights in ("random-init:seed=3:transformers=5.2", "random-init:seed=0:timm=None"):
        assert published_for(run(weights=weights)).entry is None


def test_the_source_whose_settings_differ_least_is_shown_with_the_differences():
    two_epochs = published_for(run(features="embeddings", cell=Cell.full(102400, aug_epochs=2), image_size=512))
    assert (two_epochs.entry.source, two_epochs.note) == ("open-hummingbird-eval README", "")
    one_epoch = published_for(run(features="embeddings", image_size=512))
    assert (one_epoch.entry.source, one_epoch.note) == ("FUNGI paper", "")
    dinov2 = published_for(run(model=DINOV2_S, weights="timm-hub:timm/vit_small_patch14_dinov2.lvd142m",
                               features="embeddings", cell=Cell.full(10240000), image_size=448, train_split="train"))
    assert dinov2.entry.miou == 77.0
    assert dinov2.note == ("published for 2 augmentation epochs, 504 px, train split trainaug "
                           "(this run: 1 augmentation epoch, 448 px, train split train)")
    capped = published_for(run(cell=Cell.fewshot(1 / 64, bank_size=1024000, aug_epochs=8)))
    assert capped.entry.miou == 34.0
    assert capped.note == "published for bank 2048×10⁴ (this run: bank 1024×10³)"


@pytest.mark.parametrize("what, reason", [
    (run(weights="random-init:seed=0:timm=1.0.31"),
     "published numbers are for pretrained weights; this run is random-init"),
    (run(model="vit_tiny_patch16_224"), "no published number for this model (vit_tiny_patch16_224)"),
    (run(model="custom:my_encoder", weights="sha256:0123"), "no published number for this model (custom:my_encoder)"),
    (run(model="vit_small_patch16_224"),
     "no published number for vit_small_patch16_224; published numbers name vit_small_patch16_224.dino: "
     "give that backbone name to compare"),
    (run(dataset="cityscapes"), "no published number for DINO ViT-S/16 on cityscapes"),
    (run(model=DINOV2_S, dataset="voc"), "no published fungi number for DINOv2 ViT-S/14 on voc"),
    (run(model=DINOV2_S, dataset="ade20k", features="embeddings"), "no published number for DINOv2 ViT-S/14 on ade20k"),
    (run(cell=Cell.full(4096)), "no published fungi number for DINO ViT-S/16 on voc at bank 4,096 (published: "
     "bank 1024×10², bank 1024×10³, bank 1024×10⁴, 1/128 of the training split, 1/64 of the training split)"),
])
def test_no_number_comes_with_its_reason(what, reason):
    shown = published_for(what)
    assert (shown.entry, shown.note) == (None, reason)


def test_bank_sizes_in_words():
    assert [format_bank_size(n) for n in (*FULL, FEWSHOT_BANK_SIZE, 4096, 1024)] == [
        "1024×10²", "1024×10³", "1024×10⁴", "2048×10⁴", "4,096", "1,024"]


VALID = {
    "source": {"name": "S", "citation": "C", "url": "https://example.org/s"},
    "blocks": [{"table": "T1", "dataset": "voc", "train_split": "trainaug", "image_size": 512, "aug_epochs": 1,
                "settings_note": "n", "rows": [{"model": DINO_S, "label": "L", "features": "fungi",
                                                 "miou": {102400: 50.0}}]}],
}


def mutated(change):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    change(document)
    return document


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["blocks"][0]["rows"][0].update(features="gradients"), r"rows\[0\]\.features: must be one of"),
    (lambda d: d["blocks"][0]["rows"][0].update(model="vit_small_patch16_224"), r"rows\[0\]\.model: must be a timm"),
    (lambda d: d["blocks"][0]["rows"][0].update(miou={4096: 50.0}), r"miou\[4096\]: full-data column"),
    (lambda d: d["blocks"][0]["rows"][0].update(miou={102400: True}), r"miou\[102400\]: must be an mIoU"),
    (lambda d: d["blocks"][0]["rows"][0].update(miou={102400: 150}), r"miou\[102400\]: must be an mIoU"),
    (lambda d: d["blocks"][0].update(bank_size=20480000), r"miou\[102400\]: few-shot column must be a fraction"),
    (lambda d: d["blocks"][0].update(dataset="kitti"), r"blocks\[0\]\.dataset: must be one of"),
    (lambda d: d["blocks"][0].update(aug_epochs=0), r"blocks\[0\]\.aug_epochs: must be a positive integer"),
    (lambda d: d["blocks"][0].pop("settings_note"), r"blocks\[0\]: missing \['settings_note'\]"),
    (lambda d: d["blocks"][0].update(colour="red"), r"blocks\[0\]: missing \[\], unknown \['colour'\]"),
    (lambda d: d["source"].update(url="arxiv 2407.10964"), r"source\.url: must be an https://"),
    (lambda d: d["source"].update(name=""), r"source\.name: must be non-empty text"),
    (lambda d: d["blocks"].append(d["blocks"][0]),
     "lists vit_small_patch16_224.dino voc fungi at bank 1024×10² twice"),
])
def test_a_malformed_file_is_refused_naming_the_file_and_place(tmp_path, change, problem):
    path = tmp_path / "source.yaml"
    path.write_text(yaml.safe_dump(VALID))
    assert len(load_published(tmp_path)) == 1
    path.write_text(yaml.safe_dump(mutated(change), allow_unicode=True))
    with pytest.raises(ConfigError, match=problem) as caught:
        load_published(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_loading_imports_no_torch():
    code = ("import sys; from segfungi.published import published_entries; published_entries(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
