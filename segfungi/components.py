"""The settings boundary: settings dicts (configs/defaults.yaml) become specs and objects here.

This is the one module below the commands that reads a settings dict. It turns them,
once, into what the pipeline takes: datasets, the backbone (`load_backbone_from`), the
feature extractor (`make_extractor`), and small typed specs (`bank_spec`,
`support_spec`, `index_settings`, `eval_spec`, `requested_weights`). build-bank, eval,
predict, sweep, few-shot and the benchmark all construct their parts the same way."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from segfungi.infra.errors import ConfigError


def open_dataset(settings: dict, split: str):
    from segfungi.data import build_dataset

    data = settings["data"]
    if not data["root"]:
        raise ConfigError("data.root is not set: pass --root DIR (or set data.root in the config)")
    dataset = build_dataset(data["dataset"], data["root"], split, on_bad_sample=data["on_bad_sample"])
    return dataset


def open_train_dataset(settings: dict):
    """The training split, reduced to a subset when the settings ask for one (few-shot)."""
    from segfungi.data import subset

    data = settings["data"]
    dataset = open_dataset(settings, data["train_split"])
    if data["subset_file"] or data["subset_fraction"]:
        dataset = subset(
            dataset,
            ids_file=data["subset_file"],
            fraction=data["subset_fraction"],
            seed=data["subset_seed"],
        )
    return dataset


def open_val_dataset(settings: dict):
    """The evaluated split, reduced to the ids listed in data.val_subset_file when set."""
    from segfungi.data import subset

    data = settings["data"]
    dataset = open_dataset(settings, data["val_split"])
    if data["val_subset_file"]:
        dataset = subset(dataset, ids_file=data["val_subset_file"])
    return dataset


def bank_settings(bank) -> dict:
    """The settings a bank was built with (its manifest), completed by today's defaults."""
    from segfungi.bank import MemoryBank
    from segfungi.config import load_config

    bank = bank if isinstance(bank, MemoryBank) else MemoryBank(bank)
    return load_config(base=bank.settings)


def requested_weights(settings: dict):
    """The `WeightsSource` the settings ask for, in the order loading follows: a file,
    else the hub, else a random init; None when they ask for none."""
    from segfungi.families import implied_weights
    from segfungi.infra.weights import WeightsSource

    cfg = settings["backbone"]
    weights = cfg["weights"] or implied_weights(cfg["name"])  # hf:<snapshot folder>, open_clip:<arch>:<file>
    if weights:
        return WeightsSource.file(weights)
    if cfg["pretrained"]:
        return WeightsSource.hub(cfg["name"])
    if cfg["random_init"] is not False:  # null: allowed where the name promises no weights (load_backbone_from)
        return WeightsSource.random_init(cfg["init_seed"])
    return None


@dataclass(frozen=True)
class BackboneRequest:
    """What the settings' backbone section asks for, read without loading anything."""

    name: str
    weights: object  # WeightsSource | None
    image_size: int | None  # data.image_size; None = 32 × the patch size
    dtype: str  # backbone.dtype
    mean: tuple[float, ...] | None = None  # data.mean; None = the backbone's own
    std: tuple[float, ...] | None = None  # data.std; None = the backbone's own


def requested_backbone_line(settings: dict) -> str:
    """`backbone NAME: <weights>` as the settings ask for them, before anything runs."""
    from segfungi.infra.weights import backbone_line

    source = requested_weights(settings)
    return backbone_line(settings["backbone"]["name"], source if source is not None else "no weights given")


def backbone_request(settings: dict) -> BackboneRequest:
    mean, std = normalisation(settings)
    return BackboneRequest(settings["backbone"]["name"], requested_weights(settings),
                           settings["data"]["image_size"], settings["backbone"]["dtype"], mean, std)


def normalisation(settings: dict) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) the network input is normalised with instead of the backbone's own
    (data.mean, data.std); None where the backbone's own applies."""
    data = settings["data"]
    return (tuple(data["mean"]) if data["mean"] is not None else None,
            tuple(data["std"]) if data["std"] is not None else None)


def load_backbone_from(settings: dict):
    from segfungi.families import check_weights_source

    cfg = settings["backbone"]
    check_weights_source(cfg["name"], weights=cfg["weights"], pretrained=cfg["pretrained"],
                         random_init=cfg["random_init"])
    source = requested_weights(settings)
    mean, std = normalisation(settings)
    return _cached_backbone(
        cfg["name"],
        cfg["weights"] if source.kind == "file" else None,
        source.kind == "timm-hub",
        settings["data"]["image_size"],
        cfg["init_seed"],
        cfg["device"],
        _modified_time(cfg["weights"]),
        cfg["dtype"],
        mean,
        std,
    )


def _modified_time(path) -> float | None:
    # Part of the cache key, so a checkpoint replaced on disk is loaded again.
    return os.path.getmtime(path) if path and os.path.exists(path) else None


@functools.lru_cache(maxsize=2)
def _cached_backbone(name, weights, pretrained, img_size, init_seed, device, weights_mtime, dtype="float32",
                     mean=None, std=None):
    """The backbone is frozen, so a sweep or few-shot run can share one instance
    across its banks and evaluations instead of rebuilding it each time."""
    from segfungi.families import load_backbone

    return load_backbone(name, weights=weights, pretrained=pretrained, img_size=img_size,
                         init_seed=init_seed, device=device, dtype=dtype, mean=mean, std=std)


def make_extractor(settings: dict, features: str | None = None, backbone=None, projection_dtype: str | None = None):
    """The feature extractor the settings describe (`features`: embeddings | fungi, default
    bank.features); `backbone`: one not built from the settings; `projection_dtype`: the
    projection's dtype instead of fungi.projection_dtype (see `query_projection_dtype`)."""
    from segfungi.features import FeatureExtractor
    from segfungi.gradients import projection_options

    fungi = settings["fungi"]
    return FeatureExtractor(
        backbone or load_backbone_from(settings),
        features=features or settings["bank"]["features"],
        head_dim=fungi["head_dim"],
        head_seed=fungi["head_seed"],
        tau=fungi["temperature"],
        proj_dim=fungi["proj_dim"],
        proj_seed=fungi["proj_seed"],
        projection=fungi["projection"],
        projection_options=projection_options(fungi["projection"], fungi),
        projection_dtype=projection_dtype or fungi["projection_dtype"],
        negatives=fungi["negatives"],
        variant=fungi["variant"],
        research_code_neighbours=fungi["research_code_neighbours"],
        research_code_kept=fungi["research_code_kept"],
        research_code_keep_fraction=fungi["research_code_keep_fraction"],
    )


def query_projection_dtype(settings: dict, built: str | None) -> tuple[str | None, str | None]:
    """(dtype, problem): the projection dtype a query of a bank whose projection recorded
    `built` runs with (None for an embeddings bank: no projection). "auto" takes the
    bank's; an explicit other dtype is a problem, naming the setting."""
    asked = settings["fungi"]["projection_dtype"]
    if built is None or asked == "auto":
        return built, None
    if asked != built:
        return asked, f"fungi.projection_dtype: bank has {built!r}, query has {asked!r}"
    return asked, None


def support_spec(settings: dict):
    """How a FUNGI bank's support index hands out negatives; K per the FUNGI variant."""
    from segfungi.bank import SupportSpec

    fungi = settings["fungi"]
    neighbours = fungi["research_code_neighbours"] if fungi["variant"] == "research-code" else fungi["support_neighbours"]
    return SupportSpec(neighbours=int(neighbours), exclude_self=bool(fungi["exclude_self"]), negatives=fungi["negatives"],
                       views=fungi["support_views"])


def index_settings(settings: dict):
    from segfungi.index import IndexSettings

    return IndexSettings.from_dict(settings["index"])


def device(settings: dict) -> str:
    return settings["backbone"]["device"]


def bank_out(settings: dict) -> str:
    """bank.out: the folder build-bank writes when none is given."""
    return settings["bank"]["out"]


def bank_spec(settings: dict, features: str | None = None, given_dataset: bool = False):
    """The bank the settings describe (`features` overrides bank.features); with
    `given_dataset` the images come as an object, not from the data section. The same
    bank at another size is `dataclasses.replace(spec, size=…)`."""
    from segfungi.bank import BankSpec, DataSource

    bank, data = settings["bank"], settings["data"]
    source = None if given_dataset else DataSource(
        data["dataset"], data["train_split"], data["subset_file"], data["subset_fraction"], data["subset_seed"])
    return BankSpec(
        features=features or bank["features"], size=bank["size"], aug_epochs=bank["aug_epochs"], seed=bank["seed"],
        shard_images=bank["shard_images"], label_topk=bank["label_topk"], void_label=bank["void_label"],
        cache_last_block_input=bool(bank["cache_last_block_input"]), support=support_spec(settings),
        index=index_settings(settings), source=source, batch_size=bank["batch_size"],
        num_workers=int(data["num_workers"]), device=device(settings), record=with_absolute_paths(settings),
    )


@dataclass(frozen=True)
class EvalSpec:
    """Label transfer and the evaluation loop (the eval.* settings)."""

    k: int
    temperature: float
    batch_size: int
    max_images: int | None


def eval_spec(settings: dict) -> EvalSpec:
    e = settings["eval"]
    return EvalSpec(int(e["k"]), float(e["temperature"]), int(e["batch_size"]), e["max_images"])


def evaluation_settings(settings: dict) -> dict:
    """The settings an evaluation's results record (eval, index, data)."""
    return {"eval": settings["eval"], "index": settings["index"], "data": settings["data"]}


def data_root(settings: dict) -> str | None:
    return settings["data"]["root"]


PATH_KEYS = (("data", "root"), ("data", "subset_file"), ("data", "val_subset_file"), ("backbone", "weights"))


def with_absolute_paths(settings: dict) -> dict:
    """A copy of `settings` whose file and folder paths are absolute (no symlink resolved)."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in settings.items()}
    for section, key in PATH_KEYS:
        value = out.get(section, {}).get(key)
        if value:
            out[section][key] = os.path.abspath(os.path.expanduser(str(value)))
    return out
