"""The user documentation points at things that exist: linked files, console scripts, the
multi-machine settings."""
import importlib
import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "multi_machine.md",
        ROOT / "docs" / "barge_in_evaluation.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_exist(doc):
    for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
        if "://" in target:
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_every_console_script_resolves_and_the_readme_names_the_user_ones():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), name
    readme = (ROOT / "README.md").read_text()
    for name in ("omni_ros_console", "omni_ros_alert_log", "omni_ros_bringup", "omni_ros_recorder",
                 "omni_ros_barge_in_replay"):
        assert name in scripts and name in readme, name


def test_multi_machine_doc_covers_the_settings():
    text = (ROOT / "docs" / "multi_machine.md").read_text()
    for setting in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS",
                    "ROS_DISCOVERY_SERVER", "best effort", "compressed"):
        assert setting in text, setting
