"""One version: pyproject.toml's, which setup.py records in _build_info.py for anacuda.__version__."""

import os
import re

import pytest

from conftest import _ROOT, anacuda


def test_version_is_pyprojects():
    if not getattr(anacuda._build_info, "VERSION", None):
        pytest.skip("the extension was built before setup.py recorded the version: rebuild it")
    with open(os.path.join(_ROOT, "pyproject.toml")) as f:
        want = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.MULTILINE).group(1)
    assert anacuda.__version__ == want == anacuda.build_info()["version"]
