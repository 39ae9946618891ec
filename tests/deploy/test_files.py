"""Every YAML and JSON file under deploy/ parses."""

import json

import pytest
import yaml

from deploylib import REPO, yaml_and_json_files


@pytest.mark.parametrize("path", yaml_and_json_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_parses(path):
    text = path.read_text()
    if path.suffix == ".json":
        assert isinstance(json.loads(text), dict)
    else:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        assert docs, f"{path} holds no document"
        assert all(isinstance(d, dict) for d in docs)
