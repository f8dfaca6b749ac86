"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema, offline)."""

import copy

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validation(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_gpu_workers_autoscale_and_head_is_cpu(cluster):
    types = cluster["available_node_types"]
    head, gpu = types[cluster["head_node_type"]], types["gpu_worker"]
    assert head["resources"].get("GPU", 0) == 0
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] < gpu["max_workers"]


def test_setup_installs_like_the_readme(cluster):
    setup = "\n".join(cluster["setup_commands"])
    readme = (REPO / "README.md").read_text()
    assert "make install" in setup and "hfld zoo fetch starter" in setup
    assert "make demo" in readme and "hfld zoo fetch starter" in readme


def test_validation_catches_a_broken_config(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_wokers"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
