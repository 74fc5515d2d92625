"""What executors ask Ray for, and how many fit on which nodes (no Ray started)."""

from elasticfl.config import PoolConfig
from elasticfl.runtime._resources import executor_options, executors_that_fit, resource_bundle


def node(resources, labels=None, alive=True):
    return {"Alive": alive, "Resources": resources, "Labels": labels or {}}


def test_executors_fit_node_by_node_not_by_cluster_totals():
    shape = PoolConfig(num_cpus=2)
    # 3 CPUs on each of two nodes: one executor each, although the cluster has 6
    assert executors_that_fit(shape, [node({"CPU": 3}), node({"CPU": 3})]) == 2


def test_only_alive_nodes_with_the_pools_resources_and_labels_count():
    shape = PoolConfig(num_cpus=1, resources={"hpc": 1}, labels={"elasticfl.pool": "hpc"})
    nodes = [
        node({"CPU": 4, "hpc": 2}, {"elasticfl.pool": "hpc"}),  # 2: bounded by hpc
        node({"CPU": 4, "hpc": 2}, {"elasticfl.pool": "cloud"}),  # wrong label
        node({"CPU": 4}, {"elasticfl.pool": "hpc"}),  # no hpc resource
        node({"CPU": 4, "hpc": 2}, {"elasticfl.pool": "hpc"}, alive=False),
    ]
    assert executors_that_fit(shape, nodes) == 2


def test_gpu_fractions_and_accelerator_types():
    shape = PoolConfig(num_cpus=1, num_gpus=0.5, accelerator_type="A100")
    a100 = node({"CPU": 8, "GPU": 2, "accelerator_type:A100": 1})
    t4 = node({"CPU": 8, "GPU": 2, "accelerator_type:T4": 1})
    assert executors_that_fit(shape, [a100, t4]) == 4
    assert resource_bundle(shape) == {"CPU": 1.0, "GPU": 0.5, "accelerator_type:A100": 0.001}


def test_options_carry_labels_as_a_label_selector():
    options = executor_options(PoolConfig(num_cpus=0.5, resources={"TPU": 4}, labels={"zone": "a"}))
    assert options == {"num_cpus": 0.5, "num_gpus": 0.0, "resources": {"TPU": 4}, "label_selector": {"zone": "a"}}
