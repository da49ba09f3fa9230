"""The fault-injection suite (issue 20): every test here is marked ``faults`` (run by ``make test`` and CI).
Helpers live in fault_helpers.py (imported as ``fault_helpers``: pytest puts this folder on sys.path)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
