import faulthandler
import gc
import multiprocessing
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

# The Triton kernels (tests/ops/test_triton_kernels.py) run on CPU under Triton's interpreter, which triton.jit
# reads when triton is imported; torchvision imports it (through torch._dynamo), so set it before anything else.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one test process per core (pytest-xdist). Child processes (a CLI run a test kills and
    # compares with an in-process run) take the same single thread: thread counts change the order of sums.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

MakeFolder = Callable[..., Path]


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, so failures reproduce."""
    torch.manual_seed(0)
    yield


def _write_jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    """A random-noise RGB JPEG, ``size`` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


@pytest.fixture
def make_folder(tmp_path: Path) -> MakeFolder:
    """Build ROOT/{train,val}/CLASS/*.jpg; returns ROOT."""

    def make(
        classes: Iterable[str] = ("cat", "dog", "fox"),
        per_class: int = 4,
        splits: Iterable[str] = ("train", "val"),
    ) -> Path:
        root = tmp_path / "images"
        seed = 0
        for split in splits:
            for name in classes:
                for k in range(per_class):
                    _write_jpeg(root / split / name / f"{k}.jpg", seed)
                    seed += 1
        root.mkdir(exist_ok=True)
        return root

    return make


@pytest.fixture
def fused_norm_calls(monkeypatch) -> list[int]:
    """``[n]``: how many times the SE block's fused BatchNorm operator (``ops.se_norm_scale``) ran since."""
    from senet.ops import squeeze_excite as ops

    calls = [0]
    original = ops.se_norm_scale

    def counted(*args):
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(ops, "se_norm_scale", counted)
    return calls


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run tests marked slow: checks that every run makes another way (e.g. the 101/152-layer "
        "twins of the 50-layer weight conversions), several minutes on 2 cores",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow, and checked another way in every run; pytest --run-slow runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind():
    """A child process left running (a DataLoader worker that ignores SIGTERM, a stuck rank) makes the
    interpreter's exit wait on it forever: CI would time out after passing. Loaders still alive are shut down
    as the library does at exit; anything left after that is named, killed and fails the run."""
    yield
    from senet.data.loaders import shutdown_all_loaders

    gc.collect()  # loaders nothing refers to any more shut their workers down when collected
    shutdown_all_loaders()
    leftovers = multiprocessing.active_children()
    for child in leftovers:
        child.kill()
        child.join()
    assert not leftovers, f"child processes still running after the tests (killed): {leftovers}"


def pytest_unconfigure(config: pytest.Config) -> None:
    # The last guard against a hang at exit: stacks of every thread and exit code 1 after 5 minutes.
    faulthandler.dump_traceback_later(300, exit=True)
