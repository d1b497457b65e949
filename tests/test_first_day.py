"""A researcher's first day (issue 29), on generated data: inputs checked before any work,
generated data never dressed as a real dataset, protocol keys never dropped silently,
one fraction syntax, a read-only --out refused first, interrupt and resume that say
what happened, banks dropped after their cell, every run's start kept."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from test_benchmark import benchmark_settings, lists_folder
from test_benchmark_report import make_records, make_run

import segfungi.experiments.benchmark._run as engine
from conftest import tiny_settings
from segfungi.cli import build_parser, main
from segfungi.experiments.benchmark import input_problems, run_benchmark, write_report
from segfungi.infra.errors import ConfigError


def never(*args, **kwargs):
    raise AssertionError("work started before the inputs were checked")


# ----------------------------------------------------------------- item 3: inputs
def test_every_bad_input_is_named_in_one_message_before_any_work(demo_voc_root, tmp_path, monkeypatch):
    lists = tmp_path / "lists" / "voc" / "1_div_8"
    lists.mkdir(parents=True)
    (lists / "trainaug_2_0.txt").write_text("2008_000001\n2008_000002\n")  # ids the generated data lacks
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    settings = benchmark_settings(demo_voc_root, tmp_path / "lists")
    settings["benchmark"]["datasets"] = ["voc", "ade20k"]  # ade20k: no root, no lists
    settings["backbone"]["weights"] = str(tmp_path / "missing.pth")
    monkeypatch.setattr(engine, "build_banks", never)
    monkeypatch.setattr(engine, "EncodedQueries", never)
    monkeypatch.setattr(engine, "make_extractor", never)
    with pytest.raises(ConfigError) as caught:
        run_benchmark(settings, a_file / "out", progress=False)
    text = str(caught.value)
    assert "nothing was run" in text
    assert "2 ids are not in voc trainaug" in text  # the list, before any full-data bank
    assert "benchmark.roots has no root folder for 'ade20k'" in text
    assert f"{tmp_path / 'lists'} holds no few-shot lists for ade20k" in text
    assert "output folder is not writable" in text and "choose another --out" in text
    assert f"backbone.weights: {tmp_path / 'missing.pth'} does not exist" in text
    assert not (a_file.parent / "out").exists()


def test_a_missing_train_split_and_subsets_folder_are_found_before_the_val_split_is_encoded(demo_voc_root,
                                                                                               tmp_path):
    settings = benchmark_settings(demo_voc_root, tmp_path / "no-such-lists")
    settings["benchmark"]["deviations"] = {"data.train_split": "nosuchsplit"}
    problems = input_problems(settings, tmp_path / "out")
    assert any("voc data.train_split=nosuchsplit" in p for p in problems), problems
    assert any(f"benchmark.subsets: {tmp_path / 'no-such-lists'} is neither 'standard', 'demo' nor an existing "
               "folder" in p for p in problems), problems
    good = benchmark_settings(demo_voc_root, lists_folder(demo_voc_root, tmp_path / "lists"))
    assert input_problems(good, tmp_path / "out") == []  # the control: valid inputs pass
    assert not (tmp_path / "out").exists()  # the writability probe leaves nothing behind


def test_a_deviation_that_is_no_protocol_key_is_named(demo_voc_root, tmp_path):
    settings = benchmark_settings(demo_voc_root, lists_folder(demo_voc_root, tmp_path / "lists"))
    settings["benchmark"]["deviations"] = {"bank.shard_images": 8, "data.dataset": "ade20k"}
    problems = input_problems(settings, None)
    assert any("bank.shard_images is not a key the protocol presets set" in p for p in problems)
    assert any("data.dataset is each dataset's own layout" in p for p in problems)


# ----------------------------------------------------------- item 2: generated data
def test_a_report_of_generated_data_shows_no_published_number_and_says_generated(tmp_path, monkeypatch):
    import segfungi.inference.viz as viz

    drawn = []
    real_figure = viz.protocol_figure
    monkeypatch.setattr(viz, "protocol_figure", lambda panels, title, context:
                        drawn.append(([r for panel in panels for r in panel[1]], title, context))
                        or real_figure(panels, title, context))
    control = write_report(tmp_path / "real", make_records(), make_run())
    assert "(37.2)" in control["results.md"].read_text(encoding="utf-8")  # the same cells on real data: shown
    assert any(row["published_percent"] is not None for row in drawn[0][0])
    drawn.clear()
    generated = [r | {"generated_data": True} for r in make_records()]
    written = write_report(tmp_path / "demo", generated, make_run() | {"generated_data": ["voc", "ade20k"]})
    text = written["results.md"].read_text(encoding="utf-8")
    assert "Pascal VOC 2012" not in text and "## generated demo data (voc layout)" in text
    assert "GENERATED DEMO DATA" in text and "(37.2" not in text and "Published:" not in text
    assert "generated demo data: published numbers are for the real dataset" in text
    tex = written["results.tex"].read_text(encoding="utf-8")
    assert "Pascal VOC 2012" not in tex and r"\textit{published}" not in tex and "GENERATED DEMO DATA" in tex
    assert r"\textit{published}" in control["results.tex"].read_text(encoding="utf-8")
    rows = json.loads(written["results.json"].read_text())["records"]
    assert all(r["published_miou_percent"] is None and r["generated_data"] for r in rows)
    assert "published_miou_percent" in written["results.csv"].read_text().splitlines()[0]
    assert {r["published_miou_percent"] for r in rows} == {None}
    for rows_drawn, title, context in drawn:
        assert all(r["published_percent"] is None for r in rows_drawn)
        assert "Pascal VOC" not in title and "generated demo data" in context


def test_a_figure_marks_a_published_point_of_other_settings(tmp_path):
    import matplotlib.pyplot as plt

    from segfungi.inference.viz import benchmark_figure

    rows = [{"features": "FUNGI", "bank_size": 102400, "bank_size_requested": 102400, "miou": 0.5,
             "published_percent": 50.7, "published_differs": True},
            {"features": "FUNGI", "bank_size": 1024000, "bank_size_requested": 1024000, "miou": 0.55,
             "published_percent": 56.3, "published_differs": False}]
    fig = benchmark_figure(rows, [], "t", "c")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    plt.close(fig)
    assert "FUNGI, published" in labels and "FUNGI, published † (other settings)" in labels


# -------------------------------------------------------- item 4: protocol keys
def test_a_report_cell_that_deviates_from_the_protocol_has_no_published_number(tmp_path):
    records = [r | {"deviations": ["data.train_split=train"]} if r["dataset"] == "voc" else r for r in make_records()]
    text = write_report(tmp_path, records, make_run())["results.md"].read_text(encoding="utf-8")
    voc, ade = text.split("## ADE20K")
    assert "(37.2" not in voc and "deviates from the protocol: data.train_split=train" in voc
    assert "(11.4)" in ade  # cells that keep the protocol keep their published numbers


# ----------------------------------------------------------- item 8: fractions
@pytest.mark.parametrize("command", ["fewshot", "benchmark"])
def test_fractions_as_1_over_n_and_as_decimals_are_both_accepted(command):
    args = build_parser().parse_args([command, "--fractions", "1/8", "0.125", "1/128"])
    assert args.fractions == [0.125, 0.125, 0.0078125]
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--fractions", "one/8"])


# ---------------------------------------------------- item 7: read-only --out
def test_eval_and_predict_refuse_an_unwritable_out_before_work(fungi_bank, demo_voc_root, tmp_path, monkeypatch,
                                                                 capsys):
    import segfungi.inference.evaluation as evaluation
    import segfungi.inference.predict as prediction

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    monkeypatch.setattr(evaluation, "evaluate", never)
    monkeypatch.setattr(prediction, "make_segmenter", never)
    assert main(["eval", "--bank", str(fungi_bank), "--root", str(demo_voc_root),
                 "--out", str(a_file / "results.json")]) == 2
    assert "output folder is not writable" in capsys.readouterr().err
    image = next((Path(demo_voc_root) / "VOCdevkit").rglob("*.jpg"))
    assert main(["predict", "--bank", str(fungi_bank), str(image), "--out", str(a_file / "pred")]) == 2
    assert "output folder is not writable" in capsys.readouterr().err


# ---------------------------------------------------- item 5: weights check
def test_a_preset_random_init_does_not_cover_another_backbone(capsys):
    assert main(["build-bank", "--config", "demo", "--backbone", "vit_small_patch16_224.dino",
                 "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "names pretrained weights" in err and "--random-init" in err and "demo's backbone.random_init" in err
    assert main(["build-bank", "--config", "demo", "--backbone", "vit_small_patch16_224.dino", "--random-init",
                 "--print-config"]) == 0  # said on the command line: allowed
    assert main(["build-bank", "--config", "demo", "--print-config"]) == 0  # the preset's own backbone


# ------------------------ items 4, 10, 11, 12 end to end: one small benchmark, interrupted
@pytest.fixture(scope="module")
def interrupted_then_resumed(demo_voc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("first-day") / "out"
    argv = ["benchmark", "--config", "demo", "--datasets", "voc", "--root", str(demo_voc_root), "--sizes", "1024",
            "2048", "--fractions", "--features", "embeddings", "--set", "data.train_split=train",
            "--set", "index.exact_below=1500", "--set", "data.image_size=256", "--set", "bank.shard_images=4",
            "--set", "benchmark.keep_banks=false", "--out", str(out)]
    import segfungi.inference.evaluation as evaluation

    real, calls = evaluation.evaluate, []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "evaluate", interrupted_at_the_second)
        first = _run_cli(argv)
    resumed = _run_cli(argv)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "build_banks", never)
        again = _run_cli(argv)
    return out, first, resumed, again


def _run_cli(argv):
    import contextlib
    import io

    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        code = main(list(argv))
    return code, stdout.getvalue(), err.getvalue()


def test_an_interrupt_says_what_was_kept_and_how_to_resume(interrupted_then_resumed):
    out, (code, _, err), _, _ = interrupted_then_resumed
    assert code == 130
    assert "kept 1 evaluated cell(s)" in err and "voc/full/size-1024/embeddings" in err
    resume = err.split("resume with: ")[1].strip()
    assert resume.endswith(f"--out {out}") and "benchmark --config demo" in resume and "--resume" not in resume


def test_a_resumed_run_lists_reused_cells_as_reused(interrupted_then_resumed):
    _, _, (code, _, err), (again_code, _, again_err) = interrupted_then_resumed
    assert code == 0 and again_code == 0
    assert "voc full 1024 embeddings: mIoU" in err and "reused (record of an earlier run)" in err
    assert again_err.count("reused (record of an earlier run)") == 2  # both cells, no bank rebuilt


def test_a_protocol_key_set_by_the_user_is_honoured_and_marked(interrupted_then_resumed):
    out, (_, _, err), _, _ = interrupted_then_resumed
    assert "--set data.train_split=train changes a protocol key: honoured" in err
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 2
    for record in records:
        assert record["settings"]["data"]["train_split"] == "train"  # not the protocol's trainaug
        assert record["deviations"] == ["data.train_split=train"] and record["published_miou_percent"] is None
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "deviates from the protocol: data.train_split=train" in text


def test_a_benchmark_on_generated_data_says_so(interrupted_then_resumed):
    out = interrupted_then_resumed[0]
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "Pascal VOC 2012" not in text and "generated demo data (voc layout)" in text
    assert all(r["generated_data"] for r in json.loads((out / "results.json").read_text())["records"])


def test_banks_are_dropped_and_records_kept_and_every_start_is_kept(interrupted_then_resumed):
    out = interrupted_then_resumed[0]
    assert not (out / "banks" / "voc" / "full" / "size-1024").exists()
    assert not (out / "banks" / "voc" / "full" / "size-2048").exists()
    assert len(list((out / "cells").rglob("*.json"))) == 2
    run = json.loads((out / "benchmark.json").read_text())
    assert len(run["starts"]) == 3 and run["started"] == run["starts"][0]
    text = (out / "results.md").read_text(encoding="utf-8")
    assert f"started {run['starts'][0]}, resumed {run['starts'][1]}, {run['starts'][2]}" in text
    assert "2 of 2 table cells done (2 of 2 evaluations)" in text


def test_folder_identity_of_protocol_runs_is_unchanged_without_deviations(demo_voc_root):
    """A results folder made before benchmark.deviations existed still matches."""
    settings = tiny_settings(demo_voc_root)
    assert "deviations" not in engine.folder_identity(settings)
    deviating = copy.deepcopy(settings)
    deviating["benchmark"]["deviations"] = {"data.train_split": "train"}
    assert engine.folder_identity(deviating)["deviations"] == {"data.train_split": "train"}


def test_no_progress_bar_goes_into_a_log_file(interrupted_then_resumed):
    """stderr is no terminal here: plain progress lines, never a tqdm redraw such as '0batch'."""
    _, (_, _, first_err), (_, _, err), _ = interrupted_then_resumed
    for text in (first_err, err):
        assert "\r" not in text and "batch/s" not in text and "0batch" not in text
    assert "encode voc val (batches): " in first_err


def test_column_headers_use_one_notation_per_table():
    from segfungi.published import format_bank_sizes

    assert format_bank_sizes([102400, 1024000, 10240000]) == ["1024×10²", "1024×10³", "1024×10⁴"]
    assert format_bank_sizes([4096, 20480]) == ["1024×4", "1024×20"]  # not '4,096' beside '2048×10¹'
    assert format_bank_sizes([1000, 102400]) == ["1,000", "102,400"]


# ------------------------------------------------------- item 9: a repair path
def test_a_damaged_bank_is_repaired_by_build_bank_resume_from_its_own_settings(demo_voc_root, tmp_path, capsys):
    import shutil

    from segfungi.bank import MemoryBank

    bank = tmp_path / "bank"
    assert main(["build-bank", "--config", "demo", "--root", str(demo_voc_root), "--features", "embeddings",
                 "--bank-size", "2048", "--set", "data.image_size=256", "--set", "bank.shard_images=4",
                 "--set", "index.exact_below=1500", "--out", str(bank), "--quiet"]) == 0
    before = MemoryBank(bank)
    checksums = [s["checksums"] for s in before.shards]
    shard = next((bank / "shards").iterdir())
    damaged = max(shard.glob("*.npy"), key=lambda f: f.stat().st_size)
    damaged.write_bytes(damaged.read_bytes()[:-100])  # truncated
    capsys.readouterr()
    assert main(["bank", "verify", str(bank)]) == 1
    said = capsys.readouterr().out
    assert damaged.name in said and f"repair: segfungi build-bank --resume --out {bank}" in said
    moved = tmp_path / "elsewhere"  # no preset, no root on the command line: the bank's own settings
    shutil.move(bank, moved)
    assert main(["build-bank", "--resume", "--out", str(moved), "--quiet"]) == 0
    assert "damaged file(s)" in capsys.readouterr().err
    assert main(["bank", "verify", str(moved)]) == 0
    after = MemoryBank(moved)
    assert after.hash == before.hash and [s["checksums"] for s in after.shards] == checksums


# ------------------------------------------------------- items 6 and 11: the plan
def test_the_dry_run_names_the_cells_that_do_not_fit_and_gives_a_time_range_and_both_disks(demo_voc_root, tmp_path,
                                                                                           monkeypatch, capsys):
    import re

    import segfungi.experiments.benchmark._dryrun as planning

    monkeypatch.setattr(planning, "_available_memory", lambda: int(3.5 * (1 << 30)))
    lists = lists_folder(demo_voc_root, tmp_path / "lists")
    argv = ["benchmark", "--config", "demo", "--datasets", "voc", "ade20k", "--root", f"voc={demo_voc_root}",
            "--sizes", "2048", "10240000", "--fractions", "1/8", "--subsets", str(lists), "--out", str(tmp_path / "o"),
            "--set", "data.image_size=128", "--dry-run"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    # ade20k's 1024×10⁴ bank (20210 reference images) does not fit 3.5 GiB even with int8 reordering;
    # VOC's (12 generated images: a capped bank), its lists and the 2,048 banks fit
    advice = text.split("these cells do not fit even with index.reorder_dtype=int8: ")[1].splitlines()[0]
    assert advice.startswith("ade20k full 10,240,000;") and "voc" not in advice
    assert "leave them out with --sizes 2048" in advice and "--fractions" not in advice
    assert "leave out the largest size" not in text
    assert re.search(r"median of 5 timings", text) and re.search(r"from [\d:]+ to [\d:]+ at the fastest", text)
    assert "estimated, not measured" in text
    assert re.search(r"with --drop-banks \(benchmark.keep_banks=false\) .* at most [\d.]+ [KMGT]?i?B at a time", text)


def test_the_disk_with_dropped_banks_is_the_largest_set_on_disk_at_once():
    from segfungi.experiments.benchmark import Cell
    from segfungi.experiments.benchmark._dryrun import _Line, dropped_banks_disk

    def line(cell, disk):
        return _Line(cell.label, 1, 1, disk, 1.0, (8,), cell)

    voc = [line(Cell("voc", "full", size=s), d) for s, d in ((1024, 1.0), (2048, 2.0))]  # built together: 3
    ade = [line(Cell("ade20k", "full", size=1024), 2.5)]
    few = [line(Cell("voc", "fewshot", fraction=None, subset_file=Path("a.txt")), 2.9)]
    assert dropped_banks_disk(voc + ade + few) == 3.0
    assert dropped_banks_disk(voc + ade + [line(few[0].origin, 4.0)]) == 4.0


# ------------------------------------------------------------ item 12: hints
def test_predicts_bank_mismatch_hint_names_predict(fungi_bank, demo_voc_root, tmp_path, capsys):
    image = next((Path(demo_voc_root) / "VOCdevkit").rglob("*.jpg"))
    assert main(["predict", "--bank", str(fungi_bank), str(image), "--out", str(tmp_path / "p"),
                 "--set", "fungi.proj_seed=7"]) == 2
    err = capsys.readouterr().err
    assert "other feature settings" in err and f"segfungi predict --bank {fungi_bank} IMAGES --out DIR" in err


def test_the_dev_extras_hold_what_the_readmes_notebook_command_needs():
    import re

    import tomllib

    root = Path(__file__).resolve().parents[1]
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert "jupyter nbconvert --to notebook --execute" in readme
    dev = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in dev}
    assert {"nbconvert", "ipykernel"} <= names  # the `jupyter nbconvert` command and the kernel it runs


def test_the_dry_run_lists_what_the_run_would_refuse_and_a_presets_replaced_keys_are_said(demo_voc_root, tmp_path,
                                                                                         capsys):
    lists = tmp_path / "lists" / "voc" / "1_div_8"
    lists.mkdir(parents=True)
    (lists / "trainaug_2_0.txt").write_text("2008_000001\n")
    argv = ["benchmark", "--config", "demo", "--datasets", "voc", "--root", str(demo_voc_root), "--sizes", "2048",
            "--fractions", "1/8", "--subsets", str(tmp_path / "lists"), "--set", "data.image_size=128", "--dry-run"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "problem  few-shot list" in captured.out and "1 ids are not in voc trainaug" in captured.out
    # the demo preset's data.train_split=train is replaced by the protocol's trainaug: said, with the way to keep it
    assert ("the voc full-data protocol sets data.train_split=trainaug over the preset demo's train "
            "(--set data.train_split=train keeps yours") in captured.err
