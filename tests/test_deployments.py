"""deploy/prefect.yaml is generated from flows/deployments.py and holds complete, valid configs."""

from __future__ import annotations

import importlib
import typing

import yaml

from flows.deployments import DEPLOYMENTS, PREFECT_FILE, render
from schemas import Config


def test_prefect_yaml_is_up_to_date_with_its_generator() -> None:
    assert PREFECT_FILE.read_text() == render(), "run `rner deploy render` and commit deploy/prefect.yaml"


def test_every_deployment_parameter_is_a_complete_valid_config() -> None:
    document = yaml.safe_load(PREFECT_FILE.read_text())
    assert [d["name"] for d in document["deployments"]] == [d.name for d in DEPLOYMENTS]
    for deployment in document["deployments"]:
        parameter_sets = [deployment["parameters"], *(s["parameters"] for s in deployment["schedules"])]
        cls = _config_class(deployment["entrypoint"])
        for parameters in filter(None, parameter_sets):
            config = cls.model_validate(parameters["config"])
            assert "preset" not in parameters["config"]
            assert config.model_dump(mode="json") == parameters["config"]


def _config_class(entrypoint: str) -> type[Config]:
    """The config type of the flow's ``config`` parameter: what its run form validates."""
    path, name = entrypoint.split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    return typing.get_type_hints(flow.fn)["config"]
