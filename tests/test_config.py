import pytest

from segfungi.config import load_config, parse_override
from segfungi.infra.errors import ConfigError


def test_defaults_follow_the_paper():
    settings = load_config()
    assert settings["eval"]["k"] == 30
    assert settings["eval"]["temperature"] == 0.02
    assert settings["fungi"]["head_dim"] == 96
    assert settings["fungi"]["temperature"] == 0.07
    assert settings["index"]["num_leaves"] == 512
    assert settings["index"]["reorder"] == 120


def test_overrides_in_order_and_types_checked():
    settings = load_config(overrides=["bank.size=2048", {"eval": {"k": 5}}, "eval.temperature=1"])
    assert settings["bank"]["size"] == 2048
    assert settings["eval"]["k"] == 5
    assert settings["eval"]["temperature"] == 1.0 and isinstance(settings["eval"]["temperature"], float)


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError, match=r"bank\.sise.*allowed here:.*size"):
        load_config(overrides=["bank.sise=3"])


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match=r"'eval\.k' must be int"):
        load_config(overrides=["eval.k=many"])
    with pytest.raises(ConfigError, match=r"'data' must be a mapping"):
        load_config(overrides=[{"data": 3}])


def test_preset_files_load_and_unknown_preset_lists_presets(tmp_path):
    for name in ["demo", "voc_vits16", "voc_vitb16", "ade20k_vits16", "ade20k_vitb16"]:
        load_config(name)
    with pytest.raises(ConfigError, match="presets:.*voc_vits16"):
        load_config("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bank:\n  colour: red\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(bad)


def test_parse_override_requires_equals():
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError):
        parse_override("bank.size")


def test_fungi_variant_negatives_and_image_size_settings():
    settings = load_config()
    assert settings["fungi"]["negatives"] == "normalised" and settings["fungi"]["variant"] == "paper"
    assert settings["data"]["image_size"] is None  # 32 × the backbone's patch size
    assert load_config(overrides=["data.image_size=448"])["data"]["image_size"] == 448
    research = load_config(overrides=["fungi.variant=research-code", "fungi.research_code_kept=2"])
    assert research["fungi"]["variant"] == "research-code" and research["fungi"]["research_code_kept"] == 2
    for bad in ["fungi.negatives=unit", "fungi.variant=authors", "fungi.research_code_kept=0",
                "fungi.research_code_keep_fraction=1.5", "data.image_size=-14", "data.image_size=big"]:
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(overrides=[bad])
    for name in ["voc_vits14_dinov2", "voc_vits14_reg4_dinov2", "voc_vitb14_dinov2", "voc_vitb14_reg4_dinov2"]:
        preset = load_config(name)
        assert "dinov2" in preset["backbone"]["name"] and preset["data"]["image_size"] is None


# ------------------------------------------------------------------ the schema
def test_defaults_yaml_is_the_schema_written_out():
    # configs/defaults.yaml is generated (python -m segfungi.settings_schema --write):
    # the committed file is exactly that text, and reading it gives the schema's defaults.
    import yaml

    from segfungi import settings_schema
    from segfungi.config import defaults_path

    text = defaults_path().read_text(encoding="utf-8")
    assert text == settings_schema.defaults_yaml()
    assert yaml.safe_load(text) == settings_schema.defaults() == load_config()
    _docs_follow_their_keys(text, settings_schema.keys(), indent="")


def _docs_follow_their_keys(text, keys, indent):
    lines = text.splitlines()
    for dotted, key in keys.items():
        *sections, name = dotted.split(".")
        start = 0
        for depth, section in enumerate(sections):
            start = lines.index(f"{indent}{'  ' * depth}{section}:", start)
        line = next(line for line in lines[start:] if line.startswith(f"{indent}{'  ' * len(sections)}{name}:"))
        assert key.doc.strip() and line.endswith(f"# {key.doc}"), dotted


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_classify_yaml_is_the_schema_written_out(modality):
    # configs/classify_<modality>.yaml is generated too, and reads back as the defaults.
    import yaml

    from segfungi import settings_schema
    from segfungi.classify.settings import default_config_path, defaults

    text = default_config_path(modality).read_text(encoding="utf-8")
    assert text == settings_schema.classify_yaml(modality)
    assert yaml.safe_load(text) == {"classify": defaults(modality)}
    _docs_follow_their_keys(text, settings_schema.keys(settings_schema.CLASSIFY[modality]), indent="  ")


def test_the_schema_module_checks_the_generated_files():
    from segfungi import settings_schema

    assert settings_schema.main(["--check"]) == 0
    assert set(settings_schema.generated_files()) == {
        "defaults.yaml", "classify_image.yaml", "classify_text.yaml", "classify_audio.yaml"}


@pytest.mark.parametrize("modality", [None, "image", "text", "audio"])
def test_every_schema_default_passes_its_own_checks(modality):
    from segfungi import settings_schema

    schema = None if modality is None else settings_schema.CLASSIFY[modality]
    for dotted, key in settings_schema.keys(schema).items():
        *sections, name = dotted.split(".")
        override = {name: key.default}
        for section in reversed(sections):
            override = {section: override}
        loaded = load_config(overrides=[override], schema=schema)
        for section in sections:
            loaded = loaded[section]
        assert loaded[name] == key.default
        for value in key.default if isinstance(key.default, list) else [key.default]:
            assert not key.choices or value in key.allowed(), dotted


def test_projection_kind_is_refused_at_load_time_with_the_allowed_values(tmp_path):
    message = r"'fungi\.projection' must be one of dense, structured, got 'bogus'"
    with pytest.raises(ConfigError, match=r"--set fungi\.projection=bogus: " + message):
        load_config(overrides=["fungi.projection=bogus"])
    preset = tmp_path / "p.yaml"
    preset.write_text("fungi:\n  projection: bogus\n")
    with pytest.raises(ConfigError, match=message):
        load_config(preset)
    assert load_config(overrides=["fungi.projection=structured"])["fungi"]["projection"] == "structured"


def test_index_settings_defaults_agree_with_the_schema():
    import dataclasses

    from segfungi import settings_schema
    from segfungi.index import IndexSettings

    assert dataclasses.asdict(IndexSettings()) == settings_schema.defaults()["index"]


def test_stored_bank_settings_are_completed_in_one_place():
    # A manifest written before a key existed lacks it, and one written before the
    # few-shot keys moved still has them: MemoryBank.settings (stored_settings) fills
    # the first from the defaults and drops the second, so load_config(base=...) works.
    from segfungi.settings_schema import stored_settings

    old = load_config()
    del old["bank"]["cache_last_block_input"], old["fungi"]["negatives"], old["fungi"]["variant"]
    old["fewshot"].update(bank_size=20480000, aug_epochs=8, k=90, temperature=0.1,
                          num_leaves_to_search=256, reorder=1800)
    old["eval"]["k"] = 7
    completed = stored_settings(old)
    assert completed["bank"]["cache_last_block_input"] is True
    assert (completed["fungi"]["negatives"], completed["fungi"]["variant"]) == ("normalised", "paper")
    assert "k" not in completed["fewshot"] and completed["eval"]["k"] == 7
    assert load_config(base=completed) == load_config(overrides=["eval.k=7"])
    assert "k" in old["fewshot"]  # the stored dict is not modified
    with pytest.raises(ConfigError, match=r"unknown key 'fewshot\.bank_size'.*set bank\.size instead"):
        load_config(base=old)
    from segfungi.bank import MemoryBank

    bank = MemoryBank("unused", shards_override=[], verify="off")
    bank.manifest["settings"] = old
    assert bank.settings == completed  # the one place bank settings are read through


def test_no_get_fallbacks_on_settings_sections():
    # Every key is present after load_config (and in MemoryBank.settings), so a default
    # at a call site could only disagree with the schema's.
    import re
    from pathlib import Path

    import segfungi

    pattern = re.compile(r"""(settings\[["'][a-z_]+["']\]|\bfungi)\.get\(""")
    found = [f"{path}:{number}" for path in Path(segfungi.__file__).parent.glob("*.py")
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line)]
    assert found == []
