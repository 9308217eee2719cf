"""Shared by the tests/test_hostile_*.py files: a per-category count of hostile cases tried and
passed, and the check that a refusal is one clean error line.

    CASES, _report = tally("images")    # at module level; pytest finds the _report fixture
    with CASES.case():                  # one hostile input: counted as tried, then as passed
        ...                             # if the block ends without an exception

Hypothesis examples count one by one (each runs the block). The module prints
``hostile images: 412 cases tried, 412 passed`` on the terminal when its tests are done.
"""

import contextlib
import functools

import pytest


class Tally:
    def __init__(self, category):
        self.category, self.tried, self.passed = category, 0, 0

    @contextlib.contextmanager
    def case(self):
        self.tried += 1
        yield
        self.passed += 1

    def __str__(self):
        return f"hostile {self.category}: {self.tried} cases tried, {self.passed} passed"


def tally(category):
    """(Tally, module-scoped autouse fixture that reports it): bind both at module level."""
    counts = Tally(category)

    @pytest.fixture(scope="module", autouse=True)
    def report(request):
        yield counts
        plugins = request.config.pluginmanager
        reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
        if reporter is not None:
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                reporter.write_line(f"\n{counts}")

    return counts, report


def counted(counts):
    """Decorator: each call of the test (each parametrized case) is one case of ``counts``."""
    def wrap(test):
        @functools.wraps(test)  # pytest still sees the test's own arguments (fixtures, parameters)
        def run(*args, **kwargs):
            with counts.case():
                return test(*args, **kwargs)
        return run
    return wrap


# what must never reach a user's error line: a bug report, a traceback, Python's object reprs,
# PIL's own pixel limit (clipviz quotes its own)
LEAKS = ("bug", "Traceback", "<_io.", "178,956,970", "178956970")


def one_error_line(err, *words, warnings=False):
    """The single ``clipviz: error: ...`` line of stderr ``err``, holding every one of ``words`` and
    none of LEAKS → that line. warnings=True: ``clipviz: warning:`` lines beside it are allowed."""
    lines = [line for line in err.strip().splitlines() if not (warnings and line.startswith("clipviz: warning"))]
    assert len(lines) == 1 and lines[0].startswith("clipviz: error: "), err
    for leak in LEAKS:
        assert leak not in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
