"""A pytest plugin for the library notebooks, which nbval runs as tests (loaded by pytest.ini).

The notebooks keep the outputs of their examples, so that a reader sees them without running
anything (`make examples` writes them). nbdev_clean blanks every execution count, and nbval
takes a cell that has outputs but no count for a reference that was never run, and fails it.
Under --nbval-lax no output is compared, so such a cell is marked as run. (A plugin, not a
conftest.py in nbs/: the tests import tests/conftest.py and tests/helpers.py by their module names.)"""


def pytest_collection_modifyitems(items):
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is not None and cell.get("outputs") and cell.get("execution_count") is None:
            cell["execution_count"] = 0
