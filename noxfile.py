"""Task runner. `nox -s tests` is what CI runs (plus lint and typecheck)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]

TEST_DEPS = [".[test]"]


@nox.session
def tests(session: nox.Session) -> None:
    """The default test suite: derandomized Hypothesis profile, a few minutes on 2 cores."""
    session.install("-e", *TEST_DEPS)
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """Long randomized schedule search: `nox -s stress -- --examples 20000`.

    Then the cache's crash tests with 50 SIGKILLs each (the default suite runs a few).
    """
    session.install("-e", *TEST_DEPS)
    session.run("python", "-m", "tests.support.stress", *session.posargs)
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        "sigkill or kill_with_one_slot",
        "tests/cache/test_store.py",
        "tests/cache/test_commands.py",
        env={"TRIO_PIPELINE_KILLS": "50"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", *TEST_DEPS, "mypy", "pyright", "nox")
    session.run("mypy")
    session.run("pyright")


@nox.session
def bench(session: nox.Session) -> None:
    """Engine vs a hand-written Trio DAG in the same run: `nox -s bench -- --quick`."""
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the example pipeline through the CLI."""
    session.install("-e", ".")
    session.run(
        "trio-pipeline", "run", "examples/keep_going.py", "--keep-going", success_codes=[0, 1]
    )
