import pytest
import yaml

from pper.config import PperConfig, load_config
from pper.errors import PperError


def test_defaults_and_yaml_round_trip(tmp_path):
    config = load_config()
    assert config == PperConfig() and config.replay.priority == "rank" and config.tasks.source == "humaneval"
    assert (config.tasks.holdout, config.tasks.validation) == (0.5, 0.25)
    assert "  validation: 0.25\n" in config.to_yaml()  # `pper config` shows it
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_yaml_values_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: mbpp\nreplay:\n  alpha: 0.25\n  priority: proportional\ntasks:\n  source: mbpp:x.jsonl\n")
    config = load_config(path, {"replay.exponent": 0.5, "seed": 3})
    assert (config.name, config.seed, config.replay.alpha, config.replay.priority, config.replay.exponent) == (
        "mbpp",
        3,
        0.25,
        "proportional",
        0.5,
    )
    assert str(config.run_dir) == "runs/mbpp"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("replay:\n  alpah: 0.3\n", "replay.alpah: unknown key (did you mean 'alpha'?)"),
        ("replay:\n  alpha: 1.5\n", "replay.alpha: Input should be less than or equal to 1"),
        ("replay:\n  priority: greedy\n", "replay.priority: Input should be 'rank', 'proportional' or 'uniform'"),
        ("taks: {}\n", "taks: unknown key (did you mean 'tasks'?)"),
        ("tasks:\n  validation: 1\n", "tasks.validation: Input should be less than 1"),
        ("- just\n- a list\n", "a config must be a mapping"),
        ("replay: [unclosed\n", "not valid YAML"),
    ],
)
def test_errors_name_the_bad_key(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PperError) as e:
        load_config(path)
    assert expected in str(e.value) and str(path) in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(PperError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_generation_and_execution_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "generation:\n  mode: sample\n  k: 5\n  temperature: 0.6\nexecution:\n  limits:\n    wall_time: 2\n"
    )
    config = load_config(path)
    assert (config.generation.mode, config.generation.k, config.generation.temperature) == ("sample", 5, 0.6)
    assert config.generation.model == "smollm2-135m-instruct" and config.generation.batch_size == 32
    assert config.execution.limits.wall_time == 2.0
    path.write_text("generation:\n  mode: nucleus\n")
    with pytest.raises(PperError, match="generation.mode: Input should be 'beam', 'sample' or 'greedy'"):
        load_config(path)
    path.write_text("execution:\n  limits:\n    wal_time: 2\n")
    with pytest.raises(PperError, match="execution.limits.wal_time: unknown key \\(did you mean 'wall_time'\\?\\)"):
        load_config(path)


def test_every_preset_under_configs_is_a_valid_config():
    from pathlib import Path

    presets = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(presets) >= 3
    for preset in presets:
        config = load_config(preset)  # raises, naming the key, on any mistake
        assert PperConfig.model_validate(yaml.safe_load(config.to_yaml())) == config


def test_a_stored_run_config_predating_a_key_is_read_with_the_behaviour_its_run_had(tmp_path):
    import yaml

    from pper.config import load_config, read_run_config

    data = load_config().model_dump(mode="json")
    del data["curriculum"]["prefill_stops"]  # written before curriculum.prefill_stops existed (no stops then)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**data, "curriculum": {**data["curriculum"], "enabled": True}}))
    assert read_run_config(path).curriculum.prefill_stops is False
    path.write_text(yaml.safe_dump(data))  # the curriculum off: the key changes nothing, today's default stands
    assert read_run_config(path) == load_config()
    path.write_text(": not yaml")
    with pytest.raises(PperError, match="cannot read the run configuration"):
        read_run_config(path)
