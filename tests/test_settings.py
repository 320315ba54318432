import pickle
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from sfdd_flwr.settings import CONF_DIR, ConfigError, Settings, builtin_groups, load_preset, resolve_settings
from sfdd_flwr.settings.schema import SettingsGroup, at_least, setting
from sfdd_lab import settings_tables

ROOT = Path(__file__).resolve().parents[1]


def pyproject_defaults() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def defaults() -> dict:
    return Settings.from_mapping({}).to_record()


def test_pyproject_defaults_are_the_settings_groups_defaults():
    assert pyproject_defaults() == defaults()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert settings_tables.with_app_config(pyproject) == pyproject, "run python -m sfdd_lab.settings_tables --write"


def test_the_readme_settings_tables_are_generated_from_the_groups():
    readme = (ROOT / "README.md").read_text()
    assert settings_tables.with_readme_tables(readme) == readme, "run python -m sfdd_lab.settings_tables --write"
    for key in defaults():
        assert f"| `{key}` |" in readme


def test_every_setting_belongs_to_one_group_and_has_a_rule_or_is_free_text():
    seen: dict[str, str] = {}
    for group in builtin_groups():
        assert group.title, group
        for field in group.settings_fields():
            key = field.name.replace("_", "-")
            assert key not in seen, f"{key} is declared by {seen[key]} and {group.__name__}"
            seen[key] = group.__name__
            assert field.metadata.get("help"), f"{key} has no README line"
    assert sorted(seen) == sorted(defaults())


def test_a_bad_stale_table_is_found_and_rewritten(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{settings_tables.TABLE_BEGIN}\nSTALE-TABLE\n{settings_tables.TABLE_END}\nrest\n")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n\n[tool.flwr.app.config]\nipc = 99\n\n[tool.pytest]\n')
    monkeypatch.setattr(settings_tables, "README", readme)
    monkeypatch.setattr(settings_tables, "PYPROJECT", pyproject)
    assert settings_tables.main([]) == 1
    assert settings_tables.main(["--write"]) == 0
    assert settings_tables.main([]) == 0
    assert "ipc = 1\n" in pyproject.read_text() and "[tool.pytest]" in pyproject.read_text()
    assert "rest" in readme.read_text() and "STALE-TABLE" not in readme.read_text()


def test_every_shipped_preset_is_valid():
    presets = sorted(CONF_DIR.glob("*.yaml"))
    assert presets, "conf/ holds no presets"
    for preset in presets:
        settings = resolve_settings(pyproject_defaults() | {"preset": preset.stem}, {"preset": preset.stem})
        assert settings.preset == preset.stem


def test_precedence_defaults_then_preset_then_overrides(tmp_path):
    (tmp_path / "p.yaml").write_text("ipc: 10\nnum-eval: 2\n")
    defaults = pyproject_defaults() | {"preset": "p"}
    settings = resolve_settings(defaults, {}, conf_dir=tmp_path)
    assert (settings.ipc, settings.num_eval, settings.seed) == (10, 2, 0)
    fused = defaults | {"num-eval": 7, "seed": 3}
    settings = resolve_settings(fused, {"num-eval": 7, "seed": 3}, conf_dir=tmp_path)
    assert (settings.ipc, settings.num_eval, settings.seed) == (10, 7, 3)


def test_override_equal_to_the_pyproject_default_still_beats_the_preset(tmp_path):
    (tmp_path / "p.yaml").write_text("num-eval: 2\n")
    fused = pyproject_defaults() | {"preset": "p", "num-eval": 5}
    assert resolve_settings(fused, {"num-eval": 5}, conf_dir=tmp_path).num_eval == 5


def test_preset_can_be_a_path_and_can_be_disabled(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("dataset: fashionmnist\n")
    assert resolve_settings({"preset": str(preset)}).dataset == "fashionmnist"
    assert resolve_settings({"preset": ""}).dataset == "mnist"


def _one_line_error(values: dict, overrides: dict | None = None, conf_dir: Path = CONF_DIR) -> str:
    with pytest.raises(ConfigError) as caught:
        resolve_settings({"preset": ""} | values, overrides, conf_dir)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("dataset", "imagenet", "one of cifar10, cifar100, fashionmnist, gtsrb, mnist, svhn"),
        ("ipc", 0, ">= 1"),
        ("lr-img", -0.1, "> 0"),
        ("lr-net", 0.0, "> 0"),
        ("num-server-rounds", 0, ">= 1"),
        ("momentum-img", 1.5, "[0, 1)"),
        ("ipc", "ten", "an integer"),
        ("ipc", 2.5, "an integer"),
        ("persist-momentum", "yes", "true or false"),
        ("net-hidden", -1, "the width of a hidden dense layer (Doorping's reference: 192)"),
        ("doorping-clamp", "no", "true or false"),
        ("output-dir", "relative/out", "absolute"),
        ("resume-from", "/nonexistent/run", "a readable run directory"),
        ("method", "no such method", "gradient-matching"),
        ("momentum-net", 1.0, "[0, 1)"),
        ("device", "tpu", "one of auto, cpu, cuda"),
        ("eval-mode", "clients", "one of server, federated, both"),
        ("eval-timeout", 0.0, "> 0"),
        ("class-names", "only-one", "at least two"),
        ("class-names", "a,a", "distinct"),
        ("class-names", "a,../b", "folder names"),
        ("channels", 2, "0 (the named dataset's), 1 or 3"),
        ("image-size", "28y", "HEIGHTxWIDTH"),
        ("norm-mean", "0.5,x", "one number per channel"),
        ("norm-std", "0.5,-1", "> 0"),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(key, value, fragment):
    message = _one_line_error({key: value})
    assert message.startswith(f"{key}={value!r} is not allowed")
    assert fragment in message


def test_unreadable_data_dir_is_rejected(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "data-dir=" in _one_line_error({"data-dir": str(a_file)})
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        import os

        if os.access(locked, os.R_OK):  # root reads anything: nothing to check here
            pytest.skip("running as root: permissions do not make a directory unreadable")
        assert "data-dir=" in _one_line_error({"data-dir": str(locked)})
    finally:
        locked.chmod(0o700)


def test_missing_preset_lists_the_available_ones():
    message = _one_line_error({"preset": "nope"})
    assert message.startswith("preset='nope' is not allowed")
    assert "quickstart" in message


def test_preset_with_unknown_or_bad_key_fails(tmp_path):
    (tmp_path / "typo.yaml").write_text("ipcs: 10\n")
    assert "unknown setting 'ipcs'" in _one_line_error({"preset": "typo"}, conf_dir=tmp_path)
    (tmp_path / "bad.yaml").write_text("ipc: -1\n")
    assert _one_line_error({"preset": "bad"}, conf_dir=tmp_path).startswith("ipc=-1")
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert "key: value" in _one_line_error({"preset": "list"}, conf_dir=tmp_path)


def test_load_preset_reads_the_quickstart():
    assert load_preset("quickstart")["dataset"] == "mnist"


def test_derived_views():
    from sfdd_flwr.methods.gradient_matching.settings import GradientMatchingSettings

    settings = Settings.from_mapping({"ipc": 10, "dataset": "cifar10"})
    assert settings.group(GradientMatchingSettings).loops(settings.ipc) == (10, 50)
    assert settings.network_spec.channels == 3
    assert settings.eval_params.eval_epochs == 300 and settings.eval_params.eval_augment == "none"
    mnist = Settings.from_mapping({"eval-epochs": 20})
    assert mnist.eval_params.eval_epochs == 20 and mnist.eval_params.eval_augment == "dc"
    assert Settings.from_mapping({"outer-loop": 3, "inner-loop": 4}).group(GradientMatchingSettings).loops(1) == (3, 4)
    assert Settings.from_mapping({"eval-augment": "off"}).eval_params.eval_augment == "none"
    dsa = Settings.from_mapping({"eval-augment": "dsa", "dataset": "cifar10"}).eval_params
    assert (dsa.eval_epochs, dsa.eval_augment, dsa.dsa.strategy) == (1000, "dsa", "color_crop_cutout_flip_scale_rotate")
    assert Settings.from_mapping({"eval-augment": "dsa"}).eval_params.dsa.strategy == "color_crop_cutout_scale_rotate"
    with pytest.raises(ConfigError, match="holds only flip"):
        Settings.from_mapping({"dsa-strategy": "flip"})


def test_settings_round_trip_through_a_record_a_copy_and_a_pickle():
    settings = Settings.from_mapping({"ipc": 10, "seed": 4, "lr-img": 1})
    assert Settings.from_mapping(settings.to_record()) == settings
    assert isinstance(settings.lr_img, float)
    assert pickle.loads(pickle.dumps(settings)) == settings
    changed = settings.replace(lr_img=0.5, **{"num-eval": 2})
    assert (changed.lr_img, changed.num_eval, changed.ipc) == (0.5, 2, 10)
    with pytest.raises(ConfigError, match="ipc=0"):
        settings.replace(ipc=0)
    with pytest.raises(AttributeError, match="read-only"):
        settings.ipc = 3


@dataclass(frozen=True)
class ExtraSettings(SettingsGroup):
    title = "extra"
    extra_count: int = setting(2, at_least(1), "an extra setting")


def test_a_group_from_outside_the_app_composes_with_the_app_groups():
    settings = Settings.from_mapping({"extra-count": 5}, extra_groups=(ExtraSettings,))
    assert settings.extra_count == 5 and settings.group(ExtraSettings).extra_count == 5
    assert pickle.loads(pickle.dumps(settings)).extra_count == 5
    with pytest.raises(ConfigError, match="unknown setting 'extra-count'"):
        Settings.from_mapping({"extra-count": 5})
    with pytest.raises(ConfigError, match="extra-count=0 is not allowed: must be a number >= 1"):
        Settings.from_mapping({"extra-count": 0}, extra_groups=(ExtraSettings,))


def test_fidelity_defaults_follow_the_reference_code():
    settings = Settings.from_mapping({})
    assert settings.doorping_clamp is False  # Doorping's reference never clamps its trigger
    assert settings.momentum_net == 0.0  # DC's current code: plain SGD for the inner network


IMAGEFOLDER_TASK = {"dataset": "imagefolder", "class-names": "normal, pneumonia", "channels": 3,
                    "image-size": "64x48", "norm-mean": "0.5,0.4,0.3", "norm-std": "0.2,0.2,0.25"}


def test_an_imagefolder_task_is_declared_in_the_run_config():
    settings = resolve_settings({"preset": ""} | IMAGEFOLDER_TASK)
    spec = settings.dataset_spec
    assert settings.class_name_list == ("normal", "pneumonia")
    assert (spec.num_classes, spec.channels, spec.image_size) == (2, 3, (64, 48))
    assert spec.mean == (0.5, 0.4, 0.3) and spec.std == (0.2, 0.2, 0.25)
    assert settings.network_spec.image_size == (64, 48)
    assert resolve_settings({"preset": ""} | IMAGEFOLDER_TASK | {"image-size": "32"}).dataset_spec.image_size == (32, 32)


@pytest.mark.parametrize("missing", ["class-names", "channels", "image-size", "norm-mean", "norm-std"])
def test_an_imagefolder_task_must_declare_everything(missing):
    values = dict(IMAGEFOLDER_TASK)
    values[missing] = defaults()[missing]
    message = _one_line_error(values)
    assert message.startswith(f"{missing}=") and "must be set when dataset='imagefolder'" in message


def test_normalisation_needs_one_value_per_channel_and_named_datasets_bring_their_own_task():
    assert "one number per channel (channels=3)" in _one_line_error(IMAGEFOLDER_TASK | {"norm-std": "0.2"})
    message = _one_line_error({"channels": 3})
    assert message.startswith("channels=3 is not allowed: must be left unset unless dataset='imagefolder'")


def test_evaluation_mode_picks_where_s_is_evaluated():
    both = Settings.from_mapping({"eval-mode": "both"})
    assert both.evaluates_on_server and both.evaluates_federated
    federated = Settings.from_mapping({"eval-mode": "federated"})
    assert federated.evaluates_federated and not federated.evaluates_on_server
    assert not Settings.from_mapping({"eval-mode": "both", "num-eval": 0}).evaluates_federated
