"""Config errors name the field and the fix; YAML and Python build the same config."""

from pathlib import Path

import pytest

from elasticfl import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parents[2]


def test_example_configs_validate():
    for path in (ROOT / "examples").glob("*.yaml"):
        RunConfig.from_yaml(path)


def test_yaml_and_python_agree(tmp_path):
    cfg = RunConfig.from_dict({"run": {"rounds": 3, "seed": 7}, "data": {"num_clients": 10}})
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert RunConfig.from_yaml(p) == cfg


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"task": {"type": "classification", "lrr": 0.1}})
    msg = str(e.value)
    assert "task.lrr" in msg and "unknown field" in msg and "'lr'" in msg


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="rounds: unknown field"):
        RunConfig.from_dict({"rounds": 3})


def test_bad_value_names_the_field_and_the_bound():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"task": {"type": "classification", "lr": -1}})
    assert "task.lr" in str(e.value) and "greater than 0" in str(e.value)


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"strategy": {"name": "fedsgd"}})
    assert "strategy" in str(e.value) and "fedavg" in str(e.value)


def test_cohort_larger_than_population():
    with pytest.raises(ConfigError, match="cohort.clients_per_round .* exceeds data.num_clients"):
        RunConfig.from_dict({"data": {"num_clients": 5}, "cohort": {"clients_per_round": 6}})


def test_cohort_fraction_and_count_are_exclusive():
    with pytest.raises(ConfigError, match="not both"):
        RunConfig.from_dict({"cohort": {"clients_per_round": 2, "fraction": 0.5}})


def test_fractional_gpus_above_one_are_refused():
    with pytest.raises(ConfigError, match="num_gpus"):
        RunConfig.from_dict({"executors": {"num_gpus": 1.5}})
    assert RunConfig.from_dict({"executors": {"num_gpus": 0.25}}).executors.num_gpus == 0.25


def test_import_paths_are_checked():
    with pytest.raises(ConfigError, match="package.module:name"):
        RunConfig.from_dict({"task": {"type": "custom", "path": "not_a_path"}})


def test_bad_storage_scheme():
    with pytest.raises(ConfigError, match="checkpoint.storage"):
        RunConfig.from_dict({"checkpoint": {"storage": "ftp://x/y"}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(bad)


def test_overrides_are_validated():
    cfg = RunConfig()
    assert cfg.with_overrides(run={"rounds": 2}).run.rounds == 2
    with pytest.raises(ConfigError):
        cfg.with_overrides(run={"rounds": 0})


def test_environment_is_read_in_one_place(monkeypatch):
    monkeypatch.setenv("ELASTICFL_STORAGE", "s3://b/p")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    cfg = RunConfig()
    assert cfg.resolved_storage() == "s3://b/p"
    assert cfg.resolved_endpoint() == "http://127.0.0.1:9"


def test_pools_and_client_rules_are_checked_against_each_other():
    from elasticfl import ConfigError, RunConfig

    pools = {"hpc": {"resources": {"hpc": 1}}, "cloud": {"resources": {"cloud": 1}, "spot": True}}
    config = RunConfig.from_dict(
        {"pools": pools, "clients": [{"ids": "0-49", "pool": "hpc"}, {"ids": "50-59,70", "pool": ["cloud", "hpc"]}]}
    )
    placement = config.client_pools()
    assert placement[0] == ("hpc",) and placement[70] == ("cloud", "hpc") and 65 not in placement
    for bad, message in [
        ({"pools": pools, "clients": [{"ids": "0-9", "pool": "gpu"}]}, "clients.0.pool: unknown pool 'gpu'"),
        ({"pools": pools, "clients": [{"ids": "0-9", "pool": "hpc"}, {"ids": "9", "pool": "cloud"}]},
         "client 9 is already placed by clients.0"),
        ({"pools": pools, "clients": [{"ids": "95-105", "pool": "hpc"}]}, "client 100 does not exist"),
        ({"pools": pools, "clients": [{"ids": "9-3", "pool": "hpc"}]}, "write it low-high"),
        ({"pools": {"hpc": {"num_cpu": 1}}}, "pools.hpc.num_cpu: unknown field. Did you mean 'num_cpus'?"),
        ({"pools": {"hpc": {"min": 3, "max": 1}}}, "min (3) exceeds max (1)"),
        ({"pools": pools, "executors": {"count": 2}}, "set pools.<name>.min / max"),
        ({"clients": [{"ids": "0", "pool": "hpc"}]}, "no `pools` section"),
    ]:
        with pytest.raises(ConfigError) as err:
            RunConfig.from_dict(bad)
        assert message in str(err.value), str(err.value)


def test_without_pools_the_executors_section_is_the_one_pool():
    from elasticfl import RunConfig

    [(name, pool)] = RunConfig.from_dict({"executors": {"count": 3, "num_gpus": 0.5}}).pool_shapes().items()
    assert name == "default" and pool.min == pool.max == 3 and pool.num_gpus == 0.5
