import faulthandler
import gc
import multiprocessing
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

# The Triton kernels (tests/ops/test_triton_kernels.py) run on CPU under Triton's interpreter,
# which triton.jit reads when triton is imported; torchvision imports it (through torch._dynamo),
# so set it before anything else.
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


@pytest.fixture
def figures_inside(monkeypatch) -> dict[str, Any]:
    """Every figure saved while the test runs is checked first: each visible text (titles, labels, ticks,
    legends) lies inside the saved image, by matplotlib's own measure of where it draws them. Returns the
    saved figures by file name."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    saved: dict[str, Figure] = {}
    original = Figure.savefig

    def savefig(figure, path, *args, **kwargs):
        figure.canvas.draw()  # runs the layout engine, as saving does
        renderer = figure.canvas.get_renderer()
        drawn, image = figure.get_tightbbox(renderer), figure.bbox_inches  # what is drawn; the image (inches)
        margin = 1 / figure.dpi
        if not (drawn.x0 >= -margin and drawn.y0 >= -margin and drawn.x1 <= image.x1 + margin
                and drawn.y1 <= image.y1 + margin):  # fmt: skip
            outside = [
                text.get_text()
                for text in figure.findobj(Text)
                if text.get_visible()
                and text.get_text().strip()
                and not (
                    figure.bbox.contains(*text.get_window_extent(renderer).min)
                    and figure.bbox.contains(*text.get_window_extent(renderer).max)
                )
            ]
            raise AssertionError(f"{Path(path).name}: drawn beyond the image ({drawn} vs {image}): {outside}")
        saved[Path(path).name] = figure
        return original(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


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
