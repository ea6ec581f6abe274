"""A command of the CLI run in this process, as the CLI tests run them: its arguments as strings, its exit
code checked (``code``), the click result returned for its output."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

runner = CliRunner()


def invoked(app: Any, *args: Any, code: int = 0) -> Any:
    """``app`` (a typer app) run with ``args``; asserts that it exits with ``code``."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def digits_registry(root: Any, kinds: Any, conditions: str, query: int, m: int = 100) -> tuple[Any, Any]:
    """A registry under ``root`` with protocol ``d`` on scikit-learn's digits and the MNIST ViT (k = 3, m = ``m``,
    the default), each of ``kinds`` (curated transforms of the training set) enrolled from two batches of m
    with records under ``conditions``, and ``query-<kind>.npz``: ``query`` other images of each; returns
    (the registry's folder, the data folder). The caller resets the plugin host around it."""
    import numpy as np

    from forensics.cli.commands import app
    from forensics.curation import curate
    from forensics_datasets import load_digits

    reg, data = root / "registry", root / "data"
    data.mkdir()
    train = load_digits("train")
    invoked(app, "protocol", "create", "d", "--dataset", "digits", "--encoder", "vit_mnist_tiny.forensics", "--k", "3",
            "--projection", "16", "--batch-size", m, "--registry", reg, "--default")
    for i, kind in enumerate(kinds):  # two batches of m: two instances
        np.savez(data / f"{kind}.npz", images=curate(train[:2 * m], kind, seed=10 * i))
        invoked(app, "registry", "enroll", kind, data / f"{kind}.npz", "--registry", reg, "--conditions", conditions)
        np.savez(data / f"query-{kind}.npz", images=curate(train[800:800 + query], kind, seed=100 + i))
    return reg, data
