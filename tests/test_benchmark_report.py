"""The benchmark report (segfungi.experiments.benchmark._report) on synthetic records: no model, no data.

Two datasets, two bank sizes, one few-shot fraction with two trials, both feature kinds,
one cell missing. Tables are checked against hand computations and against the FUNGI
paper's numbers as segfungi/data/published/fungi_paper.yaml holds them."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
from PIL import Image

from segfungi.experiments.benchmark import read_records, summary_table, write_report
from segfungi.infra.errors import ConfigError

DINO_S = "vit_small_patch16_224.dino"
HUB = "timm-hub:timm/vit_small_patch16_224.dino"
RANDOM = "random-init:seed=0:timm=1.0.12"
VERSIONS = {"segfungi": "0.4.0", "torch": "2.5.1", "timm": "1.0.12", "scann": "1.3.5"}
SPLITS = {"voc": ("trainaug", "val"), "ade20k": ("training", "validation")}
# measured mIoU (fractions): full data per (dataset, features, bank size asked for); few-shot
# 1/128 per (dataset, features): its two trials.
FULL = {("voc", "embeddings", 102400): 0.401, ("voc", "embeddings", 1024000): 0.433,
        ("voc", "fungi", 102400): 0.509, ("voc", "fungi", 1024000): 0.552,
        ("ade20k", "embeddings", 102400): 0.118, ("ade20k", "embeddings", 1024000): 0.147,
        ("ade20k", "fungi", 102400): 0.164}  # ade20k fungi 1024×10³: the cell not run yet
FEWSHOT = {("voc", "embeddings"): (0.301, 0.337), ("voc", "fungi"): (0.322, 0.350),
           ("ade20k", "embeddings"): (0.081, 0.095), ("ade20k", "fungi"): (0.104, 0.110)}
# FUNGI paper, DINO ViT-S/16: Table 3 (VOC) and 7 (ADE20K) at 1024×10², 10³; Table 4 at 1/128.
PAPER_FULL = {("voc", "embeddings"): (37.2, 43.1), ("voc", "fungi"): (50.7, 56.3),
              ("ade20k", "embeddings"): (11.4, 14.5), ("ade20k", "fungi"): (16.1, 20.0)}
PAPER_FEWSHOT = {("voc", "embeddings"): 26.3, ("voc", "fungi"): 29.1,
                 ("ade20k", "embeddings"): 8.8, ("ade20k", "fungi"): 10.2}
TITLES = {"voc": "Pascal VOC 2012", "ade20k": "ADE20K"}


def record(dataset, features, miou, *, size=None, fraction=None, trial=None, weights=HUB, held=None):
    fewshot = fraction is not None
    return {
        "dataset": dataset, "protocol": "fewshot" if fewshot else "full", "features": features,
        "bank_size_requested": None if fewshot else size, "fraction": fraction, "trial": trial,
        "bank_size": held or (679936 if fewshot else size), "patches_per_view": 1024,
        "train_images": 83 if fewshot else 10582, "aug_epochs": 8 if fewshot else 1, "eval_images": 1449,
        "miou": miou, "pixel_accuracy": 0.75 + miou / 10,
        "per_class_iou": {"background": 0.8, "aeroplane": miou, "bicycle": None},
        "bank_hash": f"h{abs(hash((dataset, features, size, trial))) % 10**8:08d}",
        "bank": f"/runs/b/{dataset}/{features}-{size or trial}", "backbone": DINO_S, "weights": weights,
        "image_size": 512, "device": "cuda", "versions": dict(VERSIONS),
        "timings": {"build_seconds": 12.5, "eval_seconds": 3.25},
        "settings": {"data": {"dataset": dataset, "train_split": SPLITS[dataset][0], "val_split": SPLITS[dataset][1]},
                     "bank": {"size": 20480000 if fewshot else size, "aug_epochs": 8 if fewshot else 1},
                     "eval": {"k": 90 if fewshot else 30, "temperature": 0.1 if fewshot else 0.02}},
    }


def make_records(weights=HUB) -> list[dict]:
    records = [record(d, f, m, size=s, weights=weights) for (d, f, s), m in FULL.items()]
    for (dataset, features), mious in FEWSHOT.items():
        prefix = SPLITS[dataset][0]
        records += [record(dataset, features, m, fraction="1/128", trial=f"{prefix}_128_{seed}", weights=weights)
                    for m, seed in zip(mious, (42, 400))]
    return records


def make_run(weights=HUB) -> dict:
    return {"model": DINO_S, "weights": weights, "device": "cuda", "versions": dict(VERSIONS),
            "started": "2025-03-01T09:00:00+00:00", "finished": "2025-03-01T17:30:00+00:00",
            "datasets": ["voc", "ade20k"], "sizes": [102400, 1024000], "fractions": ["1/128"],
            "features": ["embeddings", "fungi"]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(out, make_records(), make_run())


def markdown_tables(text: str) -> dict:
    """{(dataset title, protocol heading): {row label: [cell texts]}} of results.md."""
    tables, dataset, heading = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            dataset = line[3:]
        elif line.startswith("### "):
            heading = line[4:].split(",")[0].lower()
        elif line.startswith("| ") and dataset and heading and not line.startswith("| features"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables.setdefault((dataset, heading), {})[cells[0]] = cells[1:]
    return tables


def mean_and_sample_std(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_markdown_cells_are_the_hand_computed_numbers_beside_the_published_ones(report):
    out, written = report
    tables = markdown_tables(written["results.md"].read_text(encoding="utf-8"))
    for dataset, title in TITLES.items():
        full = tables[(title, "full training split")]
        for features, label in (("embeddings", "embeddings"), ("fungi", "FUNGI")):
            for column, size in enumerate((102400, 1024000)):
                if (dataset, features, size) not in FULL:
                    assert full[label][column] == "–"  # not run: no number, measured or published
                    continue
                measured = f"{100 * FULL[(dataset, features, size)]:.1f}"
                published = PAPER_FULL[(dataset, features)][column]
                assert full[label][column] == f"{measured} ({published})" + ("¹" if features == "embeddings" else
                                                                              "²" if dataset == "voc" else "¹")
            mean, std = mean_and_sample_std([100 * m for m in FEWSHOT[(dataset, features)]])
            published = PAPER_FEWSHOT[(dataset, features)]
            cell = tables[(title, "few-shot")][label][0]
            assert cell == f"{mean:.1f} ± {std:.1f} ({published})¹, n=2", cell
    # The VOC few-shot embeddings cell by hand: 30.1 and 33.7 -> 31.9 ± 2.5 (population std would be 1.8).
    assert tables[("Pascal VOC 2012", "few-shot")]["embeddings"][0] == "31.9 ± 2.5 (26.3)¹, n=2"


def test_markdown_header_and_footnotes_say_what_was_run(report):
    text = report[1]["results.md"].read_text(encoding="utf-8")
    assert f"`{DINO_S}`" in text and "pretrained weights timm/vit_small_patch16_224.dino" in text
    assert "segfungi 0.4.0" in text and "torch 2.5.1" in text and "| device | cuda |" in text
    assert "2025-03-01T09:00:00+00:00" in text
    assert "FUNGI paper, Table 3" in text and "FUNGI paper, Table 7" in text and "FUNGI paper, Table 4" in text
    assert "https://arxiv.org/abs/2407.10964" in text
    assert "RANDOM-INIT" not in text and "Settings differ" not in text


def test_partial_run_says_k_of_n_cells_done(report):
    text = report[1]["results.md"].read_text(encoding="utf-8")
    # 2 datasets × 2 kinds × (2 sizes + 1 fraction) = 12 cells; 7 full-data cells have their
    # record, the 4 few-shot cells 2 of their 5 trials.
    assert "7 of 12 table cells done" in text
    assert "ade20k FUNGI 1024×10³" in text and "voc embeddings 1/128 (2 of 5 trials)" in text
    summary = summary_table(make_records())
    assert "31.9 ± 2.5 (26.3), n=2" in summary and "40.1 (37.2)" in summary
    planned = summary_table(make_records(), make_run() | {"sizes": [102400, 1024000, 10240000]})
    assert "1024×10⁴" not in summary and re.search(r"^FUNGI +16\.4 \(16\.1\) +– +–$", planned, re.M)


def test_fewshot_cell_with_all_its_trials_is_done_and_says_no_n(tmp_path):
    records = [record("voc", "fungi", 0.3 + i / 100, fraction="1/64", trial=f"trainaug_64_{i}") for i in range(5)]
    run = make_run() | {"datasets": ["voc"], "sizes": [], "fractions": ["1/64"], "features": ["fungi"]}
    text = write_report(tmp_path, records, run)["results.md"].read_text(encoding="utf-8")
    assert "1 of 1 table cells done" in text
    assert "| FUNGI | 32.0 ± 1.6 (34.0)¹ |" in text


def test_random_init_run_shows_no_published_number_and_says_why(tmp_path):
    written = write_report(tmp_path, make_records(RANDOM), make_run(RANDOM))
    text = written["results.md"].read_text(encoding="utf-8")
    assert "RANDOM-INIT BACKBONE" in text and "measure nothing about FUNGI" in text
    assert "No published numbers: published numbers are for pretrained weights; this run is random-init." in text
    for values in [*PAPER_FULL.values(), PAPER_FEWSHOT.values()]:
        for value in values:
            assert f"({value})" not in text
    assert markdown_tables(text)[("Pascal VOC 2012", "full training split")]["FUNGI"] == ["50.9", "55.2"]
    rows = json.loads(written["results.json"].read_text())["records"]
    assert all(r["published_miou_percent"] is None and "random-init" in r["published_note"] for r in rows)
    tex = written["results.tex"].read_text()
    assert "RANDOM-INIT BACKBONE" in tex and "published}" not in tex


def test_settings_that_differ_are_marked_and_said(tmp_path):
    small = record("voc", "fungi", 0.509, size=102400)
    small["image_size"] = 224
    run = make_run() | {"datasets": ["voc"], "sizes": [102400], "fractions": [], "features": ["fungi"]}
    written = write_report(tmp_path, [small], run)
    text = written["results.md"].read_text(encoding="utf-8")
    assert "| FUNGI | 50.9 (50.7†)¹ |" in text
    assert "**Settings differ (†):** published for 512 px (this run: 224 px)." in text
    assert r"50.7$^\dagger$" in written["results.tex"].read_text()
    assert "50.9 (50.7†)" in summary_table([small]) and "†: published with other settings" in summary_table([small])


def test_a_bank_the_images_cannot_fill_shows_the_size_it_holds(tmp_path):
    # 1,464 images × 1 epoch × 1024 patches = 1,499,136 < 1024×10⁴: capped. 10,582 images
    # at 1024×10²: 9 patches per view, 95,238 held: whole patches per view, not a cap.
    kinds = ("embeddings", "fungi")
    capped = [record("voc", f, 0.4, size=10240000, held=1499136) | {"train_images": 1464} for f in kinds]
    rounded = [record("voc", f, 0.3, size=102400, held=95238) | {"patches_per_view": 9} for f in kinds]
    run = make_run() | {"datasets": ["voc"], "sizes": [102400, 10240000], "fractions": []}
    written = write_report(tmp_path, capped + rounded, run)
    text = written["results.md"].read_text(encoding="utf-8")
    assert "| features | 1024×10² | 1024×10⁴ (holds 1,499,136) |" in text
    assert "the bank holds all of them" in text
    assert r"1024$\times 10^{2}$ & 1024$\times 10^{4}$ (holds 1,499,136)" in written["results.tex"].read_text()


def test_csv_and_json_round_trip_every_record(report):
    out, written = report
    records = [r | {"generated_data": False, "deviations": []} for r in make_records()]  # the fields' defaults
    for name in ("results.csv", "results.json"):
        back = read_records(written[name])
        key = lambda r: (r["dataset"], r["protocol"], r["features"], str(r["bank_size_requested"]), str(r["trial"]))
        assert sorted(back, key=key) == sorted(records, key=key), name
    header = written["results.csv"].read_text().splitlines()[0].split(",")
    assert "miou_fraction" in header and "published_miou_percent" in header
    assert "miou" not in header and "miou_percent" not in header  # each name says its unit
    assert "published for" not in written["results.md"].read_text(encoding="utf-8")  # cells match the sources
    rows = json.loads(written["results.json"].read_text())
    assert rows["run"] == make_run()
    by_cell = {(r["dataset"], r["features"], r["bank_size_requested"], r["trial"]): r for r in rows["records"]}
    voc = by_cell[("voc", "embeddings", 102400, None)]
    assert (voc["published_miou_percent"], voc["published_source"], voc["miou_fraction"]) == \
        (37.2, "FUNGI paper, Table 3", 0.401)
    trial = by_cell[("ade20k", "fungi", None, "training_128_400")]
    assert (trial["published_miou_percent"], trial["published_source"]) == (10.2, "FUNGI paper, Table 4")
    assert trial["per_class_iou_fraction"] == {"background": 0.8, "aeroplane": 0.110, "bicycle": None}


def test_tex_is_well_formed_latex(report):
    tex = report[1]["results.tex"].read_text(encoding="utf-8")
    tex.encode("ascii")  # every symbol written as a LaTeX command
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    unescaped = re.sub(r"\\[{}_%$&#]", "", body)
    assert unescaped.count("{") == unescaped.count("}")
    depth = 0
    for char in unescaped:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert not set("_%#") & set(unescaped)  # only as \_ \% \# (comments left out above)
    assert all(line.count("$") % 2 == 0 for line in unescaped.splitlines())
    open_environments = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            open_environments.append(name)
        else:
            assert open_environments.pop() == name
    assert not open_environments
    tabulars = re.findall(r"\\begin\{tabular\}\{(l(?:r)*)\}(.*?)\\end\{tabular\}", body, re.S)
    assert len(tabulars) == 4  # 2 datasets × (full, few-shot)
    for spec, rows in tabulars:
        assert "\\toprule" in rows and "\\midrule" in rows and "\\bottomrule" in rows
        lines = [line for line in rows.splitlines() if line.endswith("\\\\")]
        assert lines and all(len(re.split(r"(?<!\\)&", line)) == len(spec) for line in lines)
    assert "vit\\_small\\_patch16\\_224.dino" in body
    assert "31.9 $\\pm$ 2.5\\,(n{=}2)" in body and "\\quad\\textit{published} & 37.2 & 43.1 \\\\" in body


def test_a_png_per_dataset(report):
    out, written = report
    for dataset in ("voc", "ade20k"):
        path = written[f"{dataset}.png"]
        assert path == out / f"{dataset}.png" and path.stat().st_size > 10_000
        with Image.open(path) as picture:
            assert picture.format == "PNG" and min(picture.size) > 300
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # atomic writes left nothing behind


def test_benchmark_figure_marks_published_points_hollow_in_the_series_colour():
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from segfungi.inference.viz import benchmark_figure

    full = [{"features": "FUNGI", "bank_size": s, "bank_size_requested": s, "miou": m, "published_percent": p}
            for s, m, p in ((102400, 0.509, 50.7), (1024000, 0.552, None))]
    fewshot = [{"features": "FUNGI", "fraction": "1/128", "miou_mean": 0.336, "miou_std": 0.02,
                "published_percent": 29.1}]
    fig = benchmark_figure(full, fewshot, "t", "c")
    try:
        size_axis, fraction_axis = fig.axes
        series = next(line for line in size_axis.lines if line.get_label() == "FUNGI")
        hollow = next(line for line in size_axis.lines if line.get_label() == "FUNGI, published")
        assert hollow.get_markerfacecolor() == "none" and list(hollow.get_ydata()) == [50.7]
        assert mcolors.same_color(hollow.get_markeredgecolor(), series.get_color())
        assert list(size_axis.get_xticks()) == [102400, 1024000] and size_axis.get_xscale() == "log"
        assert size_axis.get_ylim()[0] == 0 and fraction_axis.get_ylim()[0] == 0
        assert [t.get_text() for t in fraction_axis.get_xticklabels()] == ["1/128"]
    finally:
        plt.close(fig)


def test_bad_records_are_refused_naming_the_record_and_field(tmp_path):
    records = make_records()
    broken = copy.deepcopy(records)
    del broken[3]["miou"]
    with pytest.raises(ConfigError, match=r"record 3 \(voc full fungi 1024000\): missing fields \['miou'\]"):
        write_report(tmp_path, broken, make_run())
    with pytest.raises(ConfigError, match="the same cell and trial as record 0"):
        write_report(tmp_path, [records[0], dict(records[0])], make_run())
    percent = copy.deepcopy(records[:1])
    percent[0]["miou"] = 40.1
    with pytest.raises(ConfigError, match="miou is a fraction 0..1, got 40.1"):
        summary_table(percent)
    other_model = copy.deepcopy(records[:2])
    other_model[1]["backbone"] = "vit_base_patch16_224.dino"
    with pytest.raises(ConfigError, match="2 models"):
        summary_table(other_model)
    with pytest.raises(ConfigError, match="missing finished"):
        write_report(tmp_path, records, {k: v for k, v in make_run().items() if k != "finished"})
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a segfungi benchmark results.csv"):
        read_records(tmp_path / "other.csv")


def test_a_run_with_no_cell_done_yet_writes_empty_tables_and_no_figure(tmp_path):
    written = write_report(tmp_path, [], make_run())
    text = written["results.md"].read_text(encoding="utf-8")
    assert "0 of 12 table cells done" in text and "No cell of this table has been run yet." in text
    assert markdown_tables(text)[("ADE20K", "few-shot")] == {"embeddings": ["–"], "FUNGI": ["–"]}
    assert set(written) == {"results.md", "results.csv", "results.json", "results.tex"}
    assert read_records(written["results.csv"]) == [] and read_records(written["results.json"]) == []


def test_cells_measured_on_another_device_or_versions_are_said(tmp_path):
    records = make_records()[:2]
    records[1] = records[1] | {"device": "cpu", "versions": VERSIONS | {"torch": "2.6.0"}}
    text = write_report(tmp_path, records, make_run())["results.md"].read_text(encoding="utf-8")
    assert "| other devices | some cells were measured on cpu |" in text
    assert "some cells were measured with segfungi 0.4.0 · torch 2.6.0 · timm 1.0.12 · scann 1.3.5" in text


def test_engine_records_with_extra_keys_and_numpy_numbers_are_written_plain(tmp_path):
    import numpy as np

    records = make_records()[:1]
    engine = records[0] | {"cache_key": "abc", "bank_size": np.int64(102400), "miou": np.float32(0.5)}
    written = write_report(tmp_path, [engine], make_run())
    back = read_records(written["results.json"])
    assert back == [records[0] | {"miou": float(np.float32(0.5)), "generated_data": False, "deviations": []}]
    assert type(back[0]["bank_size"]) is int and "cache_key" not in written["results.csv"].read_text()


def test_the_engines_plan_of_fewshot_lists_sets_the_cells_and_their_trials(tmp_path):
    records = [record("voc", "fungi", 0.3 + i / 100, fraction="1/8", trial=f"trainaug_8_{i}") for i in range(3)]
    run = make_run() | {"datasets": ["voc", "cityscapes"], "sizes": [], "fractions": ["1/8"], "features": ["fungi"],
                        "fewshot_lists": {"voc": {"1/8": 3}}}  # three lists; cityscapes has none
    text = write_report(tmp_path, records, run)["results.md"].read_text(encoding="utf-8")
    assert "1 of 1 table cells done" in text and "## Cityscapes" not in text
    assert "| FUNGI | 31.0 ± 1.0 |" in text  # no published 1/8 number; no n=3: all its lists are in
    assert "No published numbers: no published fungi number for DINO ViT-S/16 on voc at 1/8 of the training" in text
