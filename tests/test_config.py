import pytest

from segfungi.config import load_config, parse_override
from segfungi.errors import ConfigError


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
