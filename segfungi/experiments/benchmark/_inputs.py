"""Every input of a benchmark checked before any work, with one message naming all that is wrong.

A benchmark runs for hours; a problem found after the first bank is built costs those
hours. So, before anything is encoded, `check_inputs` opens (cheaply: file lists, no
images decoded) what every cell will read and collects every problem:

- each dataset's root, and its training and validation splits under both protocols;
- the few-shot lists: `benchmark.subsets` is 'standard', 'demo' or an existing folder,
  the folder holds lists for every benchmarked dataset with few-shot fractions asked for
  (else those cells would silently not be planned), and every id of every list is in
  the training split;
- `benchmark.deviations`: only keys a protocol preset sets, never `data.dataset`;
- the results folder can be created and written;
- the weights: a named checkpoint file exists, and a name promising pretrained weights
  is not run as a random init unless asked (segfungi.backbones.check_weights_source).

`check_inputs` raises one ConfigError listing them all, each naming the key or file and
the fix; `dry_run` prints the same list as warnings (it writes nothing, so an output
folder is not checked there).
"""

from __future__ import annotations

from pathlib import Path

from segfungi.experiments.benchmark._protocol import (
    dataset_settings,
    plan_cells,
    protocol_key_names,
    subsets_folder,
)
from segfungi.experiments.benchmark._protocols import benchmark_protocol, protocol_names
from segfungi.infra.errors import ConfigError, SegfungiError

__all__ = ["check_inputs", "input_problems"]


def check_inputs(settings: dict, out: str | Path | None, backbone=None) -> None:
    """Refuse (ConfigError) with every problem `input_problems` finds, before any work."""
    problems = input_problems(settings, out, backbone)
    if problems:
        raise ConfigError(f"segfungi benchmark: nothing was run: {len(problems)} problem(s) with the inputs; "
                          "fix them all, then rerun:\n  - " + "\n  - ".join(problems))


def input_problems(settings: dict, out: str | Path | None, backbone=None) -> list[str]:
    """What is wrong with the run's inputs, in words (module docstring); [] when nothing.
    `out` None: the results folder is not checked (a dry run writes nothing)."""
    problems = _deviation_problems(settings)
    try:
        cells = plan_cells(settings)
    except SegfungiError as err:
        problems.append(str(err))
        cells = []
    for dataset in dict.fromkeys(settings["benchmark"]["datasets"]):
        problems += _dataset_problems(settings, dataset, [c for c in cells if c.dataset == dataset])
    if out is not None:
        problems += _output_problems(Path(out))
    if backbone is None:
        problems += _weights_problems(settings)
    return list(dict.fromkeys(problems))  # a root missing under both protocols is said once


def _deviation_problems(settings: dict) -> list[str]:
    known = protocol_key_names(settings["benchmark"]["datasets"])  # a dataset without one: reported with it
    problems = []
    for key in settings["benchmark"]["deviations"]:
        if key == "data.dataset":
            problems.append("benchmark.deviations: data.dataset is each dataset's own layout; choose the "
                            "datasets with --datasets")
        elif key not in known:
            problems.append(f"benchmark.deviations: {key} is not a key the protocol presets set "
                            f"({', '.join(sorted(known))}); set it directly (--set {key}=…)")
    return problems


def _dataset_problems(settings: dict, dataset: str, cells: list) -> list[str]:
    from segfungi.components import open_train_dataset, open_val_dataset
    from segfungi.data import subset

    problems = []
    protocols = _asked_protocols(settings, dataset)
    if settings["benchmark"]["fractions"]:
        problems += _lists_problems(settings, dataset, cells)
    for protocol in protocols:
        try:
            chosen = dataset_settings(settings, dataset, protocol)
        except SegfungiError as err:
            problems.append(str(err))
            continue
        root = Path(chosen["data"]["root"]).expanduser()
        if not root.is_dir():  # said once, not once per split
            problems.append(f"benchmark.roots.{dataset}: {root} is not a folder (pass --root {dataset}=DIR)")
            continue
        for split, opener in (("train_split", open_train_dataset), ("val_split", open_val_dataset)):
            try:
                opened = opener(chosen)
            except SegfungiError as err:
                problems.append(f"{dataset} data.{split}={chosen['data'][split]}: {err}")
                continue
            if split == "train_split" and not benchmark_protocol(protocol).by_size:
                for cell in (c for c in cells if c.protocol == protocol):
                    try:
                        subset(opened, ids_file=cell.subset_file)
                    except SegfungiError as err:
                        problems.append(f"few-shot list {err}")
    return problems


def _asked_protocols(settings: dict, dataset: str) -> list[str]:
    """The protocols that plan cells on `dataset`, or would but cannot plan them (a
    folder of lists that is not there: said by _lists_problems)."""
    asked = []
    for name in protocol_names():
        try:
            planned = bool(benchmark_protocol(name).plan(settings, dataset))
        except SegfungiError:
            planned = True
        if planned:
            asked.append(name)
    return asked


def _lists_problems(settings: dict, dataset: str, cells: list) -> list[str]:
    """Few-shot fractions asked for, but no list of this dataset planned: say why."""
    if any(not c.entry.by_size for c in cells) or settings["benchmark"]["subsets"] == "standard":
        return []  # the standard lists hold none for a dataset without them (Cityscapes): by design
    try:
        folder = subsets_folder(settings)
    except ConfigError as err:
        return [str(err)]
    return [f"benchmark.subsets: {folder} holds no few-shot lists for {dataset} ({folder / dataset}/1_div_<N>/*.txt "
            "expected), so its few-shot cells would not run: give a folder that holds them, or --fractions with "
            "no value for no few-shot cells"]


def _output_problems(out: Path) -> list[str]:
    from segfungi.infra.storage import ensure_writable_dir

    try:
        ensure_writable_dir(out)
    except SegfungiError as err:
        return [f"benchmark.out: {err}"]
    return []


def _weights_problems(settings: dict) -> list[str]:
    from segfungi.families import check_weights_source

    cfg = settings["backbone"]
    if cfg["weights"] and not Path(cfg["weights"]).expanduser().is_file():
        return [f"backbone.weights: {cfg['weights']} does not exist (give the checkpoint file with --weights FILE)"]
    try:
        check_weights_source(cfg["name"], weights=cfg["weights"], pretrained=cfg["pretrained"],
                             random_init=cfg["random_init"])
    except SegfungiError as err:
        return [str(err)]
    return []
