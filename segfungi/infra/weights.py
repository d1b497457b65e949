"""Where a backbone's weights come from, and the id a bank records for it.

A `WeightsSource` formats its own id and parses it back; nothing else in segfungi
writes or reads these strings::

    file:<file name>:sha256:<16 hex>       a local checkpoint (digest of the file's bytes)
    timm-hub:<hub id or URL>               timm's pretrained weights, downloaded
    hf-hub:<repo id>                       a Hugging Face transformers model's hub weights
    open_clip-hub:<arch>:<tag>             open_clip's pretrained weights (its tag)
    random-init:seed=<n>:timm=<version>    an untrained network (timm's initialisers, seeded;
                                           the version is recorded because they may change;
                                           transformers=<version>, open_clip=<version> for
                                           networks those libraries initialise)
    sha256:<16 hex>                        a `segfungi.CustomBackbone`'s parameters
    unchecked                              a `CustomBackbone` made with fingerprint=False

A source asked for by settings (`WeightsSource.file(path)` without a digest, `random_init(seed)`
without a timm version) is compared with a bank's recorded one before any model is loaded:
`mismatch` says what differs, in the words of the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["WeightsSource", "backbone_line", "describe_id"]

KINDS = ("file", "timm-hub", "hf-hub", "open_clip-hub", "random-init", "parameters")
# Weights a library downloads by name: a query asking for "the hub" (pretrained) matches
# any of them (the backbone name says which hub).
HUB_KINDS = ("timm-hub", "hf-hub", "open_clip-hub")


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # one of KINDS
    name: str = ""  # file: the file's name (a request may hold the whole path); timm-hub: the hub id
    digest: str | None = None  # file, parameters: sha256 prefix (None: not computed / unchecked)
    seed: int | None = None  # random-init
    timm_version: str | None = None  # random-init: the initialising library's version
    library: str = "timm"  # random-init: the library whose initialisers ran

    # ---- making one
    @classmethod
    def file(cls, path: str | Path, digest: str | None = None) -> "WeightsSource":
        return cls("file", str(path), digest)

    @classmethod
    def hub(cls, tag: str, kind: str = "timm-hub") -> "WeightsSource":
        if kind not in HUB_KINDS:
            raise ValueError(f"not a hub kind: {kind!r} (one of {', '.join(HUB_KINDS)})")
        return cls(kind, str(tag))

    @classmethod
    def random_init(cls, seed: int, timm_version: str | None = None, library: str = "timm") -> "WeightsSource":
        return cls("random-init", seed=int(seed), timm_version=timm_version, library=library)

    @classmethod
    def parameters(cls, digest: str | None) -> "WeightsSource":
        return cls("parameters", digest=digest)

    # ---- the id
    @property
    def id(self) -> str:
        if self.kind == "file":
            return f"file:{Path(self.name).name}:sha256:{self.digest}"
        if self.kind in HUB_KINDS:
            return f"{self.kind}:{self.name}"
        if self.kind == "random-init":
            return f"random-init:seed={self.seed}:{self.library}={self.timm_version}"
        return f"sha256:{self.digest}" if self.digest else "unchecked"

    @classmethod
    def parse(cls, text: str) -> "WeightsSource":
        """The source a recorded id names; ValueError for a string that is none of the forms."""
        text = str(text)
        kind, _, rest = text.partition(":")
        if kind == "file" and ":sha256:" in rest:
            name, _, digest = rest.rpartition(":sha256:")
            return cls.file(name, digest)
        if kind in HUB_KINDS and rest:
            return cls.hub(rest, kind)
        if kind == "random-init" and rest.startswith("seed="):
            seed, _, versioned = rest.removeprefix("seed=").partition(":")
            library, _, version = versioned.partition("=")
            if seed.isdigit() and library:
                return cls.random_init(int(seed), version if version and version != "None" else None, library)
        if kind == "sha256" and rest:
            return cls.parameters(rest)
        if text == "unchecked":
            return cls.parameters(None)
        raise ValueError(f"not a weights id: {text!r} (expected file:…, timm-hub:…, hf-hub:…, open_clip-hub:…, "
                         "random-init:… or sha256:…)")

    # ---- reading one
    @property
    def is_random(self) -> bool:
        return self.kind == "random-init"

    def describe(self) -> str:
        """In words, for titles and first lines: where the weights come from."""
        if self.kind == "random-init":
            return f"random init (seed {self.seed}), no pretrained weights"
        if self.kind in HUB_KINDS:
            return f"pretrained weights {self.name}"
        if self.kind == "file":
            return f"weights {Path(self.name).name}" if self.digest else f"weights from {self.name}"
        return f"custom model parameters {self.id}"

    def asked_as(self) -> str:
        """What settings asking for this source say, in an error message."""
        if self.kind in HUB_KINDS:
            return "hub weights (pretrained)"
        return {"file": f"weights file {self.name}"}.get(self.kind, "a random init")

    def mismatch(self, requested: "WeightsSource | None") -> str | None:
        """Why a bank built from these weights cannot answer a query that asks for
        `requested` (known before loading anything), or None. A file's content and a
        random init's timm version are compared once the model is loaded."""
        if requested is None or self.kind == "parameters":
            return None
        if requested.kind != self.kind and not (requested.kind in HUB_KINDS and self.kind in HUB_KINDS):
            return f"backbone weights: bank has {self.id!r}, query asks for {requested.asked_as()}"
        if self.kind == "random-init" and requested.seed != self.seed:
            return f"backbone.init_seed: bank has {self.id!r}, query has init_seed {requested.seed}"
        return None


def describe_id(text: str) -> str:
    """A recorded weights id in words (the id itself when it is none of the forms)."""
    try:
        return WeightsSource.parse(text).describe()
    except ValueError:
        return str(text)


def backbone_line(name: str, weights: WeightsSource | str) -> str:
    """`backbone NAME: <where its weights come from>`: the first line of every command that
    prints results, so that a random init under a trained network's name is never taken
    for it (the name alone would promise the weights)."""
    return f"backbone {name}: {weights.describe() if isinstance(weights, WeightsSource) else weights}"
