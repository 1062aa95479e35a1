"""``senet export``: the written files run without senet, match eager PyTorch, hold the preprocessing, and a
failed check writes nothing. A tiny post-activation SE-ResNet (every BN follows a conv) at 32x32 keeps this
fast. Every family's ONNX file against onnxruntime, and the full se_resnet50, are
tests/peers/test_onnxruntime.py's."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import senet
import senet.deploy.export as export
from senet.cli import main
from senet.data.transforms import Preprocessing
from senet.deploy.export import FP32_TOLERANCE, export_model
from senet.weights.info import WeightsInfo, save_weights_file

TINY = dict(widths=(8, 8, 16, 16), stem_width=8)  # se_resnet18's layout, 8-16 channels wide
PRE = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), input_size=32, crop_fraction=1.0)
LABELS = [f"class {k}" for k in range(10)]
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}

# Run in a fresh interpreter (-I: no PYTHONPATH, no current folder on the path) where `import senet` fails
# even though the package is installed in this environment: a None entry in sys.modules stops every
# import of it.
_WITHOUT_SENET = 'import sys\nsys.modules["senet"] = None\n'
_RUNNER = (
    _WITHOUT_SENET
    + r"""
import numpy as np
fmt, path, *inputs = sys.argv[1:]
if fmt == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    run = lambda x: session.run(["logits"], {"input": x})[0]
else:
    import torch
    module = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()
    run = lambda x: module(torch.from_numpy(x)).detach().numpy()
for name in inputs:
    np.save(name + ".out.npy", run(np.load(name)))
"""
)


def _randomise_batchnorms(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding them has something to get wrong."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in (
                    (module.running_mean, -0.2, 0.2),
                    (module.running_var, 0.5, 2.0),
                    (module.weight, 0.5, 1.5),
                    (module.bias, -0.2, 0.2),
                ):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


def _save(path: Path, name: str, options: dict, num_classes: int, pre: Preprocessing, labels=None) -> Path:
    model = senet.create_model(name, num_classes=num_classes, **options)
    _randomise_batchnorms(model)
    info = WeightsInfo(name, options, num_classes, pre, labels=labels)
    return save_weights_file(path, model.state_dict(), info)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    return _save(folder / "tiny.safetensors", "se_resnet18", TINY, 10, PRE, LABELS)


@pytest.fixture(scope="module")
def eager(weights: Path) -> torch.nn.Module:
    """The unfolded network in eager PyTorch: what every file is compared with."""
    return senet.load_pretrained(weights).eval()


@pytest.fixture(scope="module")
def cli_onnx(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """``senet export --format onnx --dynamic-batch``: the file, the exit status and what it printed."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["export", "--checkpoint", str(weights), "--out", str(out), "--dynamic-batch"])
    return out, status, printed.getvalue()


@pytest.fixture(scope="module")
def exported(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dynamic-batch TorchScript file and ExportedProgram (they need no ONNX package)."""
    folder = tmp_path_factory.mktemp("exported")
    files = {}
    for format in ("torchscript", "exported-program"):
        files[format] = folder / f"tiny{SUFFIX[format]}"
        export_model(weights, files[format], format, dynamic_batch=True)
    return files


def test_the_cli_prints_the_report_and_succeeds(cli_onnx):
    out, status, printed = cli_onnx
    assert status == 0 and out.is_file()
    first, second = printed.strip().splitlines()
    assert first.startswith(f"wrote {out} (ONNX opset ") and "float32, dynamic batch" in first
    assert "20 BatchNorms folded)" in first  # se_resnet18: every one of its 20 BNs follows a conv
    assert (
        second.startswith("max |onnxruntime - PyTorch| = ") and "batch 2 and 3 (tolerance 1.0e-04)" in second
    )
    assert float(second.split("= ")[1].split()[0]) <= FP32_TOLERANCE


def test_the_onnx_file_has_batchnorm_folded_and_records_the_preprocessing(cli_onnx):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(cli_onnx[0]))
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    assert "Conv" in {node.op_type for node in model.graph.node}
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == [
        "logits"
    ]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]  # any batch, fixed image
    meta = {entry.key: entry.value for entry in model.metadata_props}
    assert meta["model"] == "se_resnet18" and json.loads(meta["labels"]) == LABELS
    assert json.loads(meta["mean"]) == pytest.approx(PRE.mean) and json.loads(meta["std"]) == pytest.approx(
        PRE.std
    )
    assert json.loads(meta["input_size"]) == 32 and json.loads(meta["resize"]) == 32
    assert meta["interpolation"] == "bilinear" and meta["input_dtype"] == "float32"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_torch_files_have_batchnorm_folded_and_record_the_preprocessing(exported):
    extra = {"senet.json": ""}
    scripted = torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    assert "batch_norm" not in str(scripted.inlined_graph) and "conv" in str(scripted.inlined_graph)
    assert json.loads(extra["senet.json"])["mean"] == pytest.approx(PRE.mean)
    extra = {"senet.json": ""}
    program = torch.export.load(str(exported["exported-program"]), extra_files=extra)
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert not [t for t in targets if "batch_norm" in t] and any("conv" in t for t in targets)
    assert json.loads(extra["senet.json"])["labels"] == LABELS


def test_the_subprocess_cannot_import_senet(tmp_path):
    """The check below means something: in its interpreter, a file that needed senet would fail to load."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", _WITHOUT_SENET + "import senet.models"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, result.stderr


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_files_run_without_senet_at_any_batch_and_match_eager(format, request, eager, tmp_path):
    path = (
        request.getfixturevalue("cli_onnx")[0]
        if format == "onnx"
        else request.getfixturevalue("exported")[format]
    )
    inputs = []
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        np.save(tmp_path / f"x{batch}.npy", x.numpy())
        inputs.append(f"x{batch}.npy")
    result = subprocess.run(
        [sys.executable, "-I", "-c", _RUNNER, format, str(path), *inputs],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in inputs:
        x = torch.from_numpy(np.load(tmp_path / name))
        with torch.no_grad():
            expected = eager(x)
        got = torch.from_numpy(np.load(tmp_path / f"{name}.out.npy"))
        assert got.shape == (x.shape[0], 10)
        assert (got - expected).abs().max().item() <= FP32_TOLERANCE


def test_fp16_onnx_runs_in_float16_within_its_stated_tolerance(weights, eager, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    report = export_model(weights, tmp_path / "half.onnx", "onnx", fp16=True, batch=3)
    assert report.dtype == "float16" and report.batches == (3,) and not report.dynamic_batch
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)" and session.get_inputs()[0].shape == [
        3,
        3,
        32,
        32,
    ]
    x = torch.randn(3, 3, 32, 32).half()
    got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0]).float()
    with torch.no_grad():
        expected = eager(x.float())
    scale = max(1.0, expected.abs().max().item())
    assert report.tolerance >= export.FP16_RELATIVE_TOLERANCE  # relative to max(1, |logits|)
    assert (got - expected).abs().max().item() <= export.FP16_RELATIVE_TOLERANCE * scale
    assert 0 < report.max_abs_diff <= report.tolerance


def _wrong_writer(monkeypatch: pytest.MonkeyPatch, format: str) -> None:
    """Make the exporter write a slightly different network, as an exporter bug would."""
    write = export._WRITERS[format]

    def perturbed(module, *args):
        with torch.no_grad():
            module.fc.bias.add_(1e-3)
        write(module, *args)

    monkeypatch.setitem(export._WRITERS, format, perturbed)


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_check_writes_nothing_and_keeps_the_existing_file(existing, weights, tmp_path, monkeypatch):
    out = tmp_path / "model.pt"
    if existing:
        out.write_bytes(b"the good file of an earlier export")
    _wrong_writer(monkeypatch, "torchscript")
    with pytest.raises(ValueError, match=r"differs from PyTorch by up to 0\.001.*tolerance 1\.0e-04"):
        export_model(weights, out, "torchscript")
    assert [p.name for p in tmp_path.iterdir()] == (["model.pt"] if existing else [])  # no temporary left
    if existing:
        assert out.read_bytes() == b"the good file of an earlier export"


def test_sigterm_while_writing_keeps_the_existing_file_and_leaves_no_temporary(
    weights, tmp_path, monkeypatch
):
    out = tmp_path / "model.pt"
    out.write_bytes(b"a good export from before")
    write = export._WRITERS["torchscript"]

    def terminated_midway(module, example, path, *args):
        write(module, example, path, *args)  # the temporary file is written ...
        os.kill(os.getpid(), signal.SIGTERM)  # ... and a scheduler stops the job before the rename

    monkeypatch.setitem(export._WRITERS, "torchscript", terminated_midway)
    argv = ["export", "--checkpoint", str(weights), "--format", "torchscript", "--out", str(out)]
    assert main(argv) == 128 + signal.SIGTERM
    assert out.read_bytes() == b"a good export from before"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main put the default handler back


def test_a_wrong_fold_is_caught_before_anything_is_written(weights, tmp_path, monkeypatch):
    fold = export.fold_batchnorm

    def wrong_fold(model):
        folded = fold(model)
        with torch.no_grad():
            folded.conv1.weight.mul_(1 + 1e-6)  # a one-in-a-million error in the stem
        return folded

    monkeypatch.setattr(export, "fold_batchnorm", wrong_fold)
    with pytest.raises(ValueError, match="folding BatchNorm changed the float64 logits"):
        export_model(weights, tmp_path / "model.pt", "torchscript")
    assert not list(tmp_path.iterdir())


def test_an_opset_the_exporter_cannot_write_is_refused(weights, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # torch's exporter starts at opset 18 and cannot convert this graph down to 17: it would keep 18 silently.
    with pytest.raises(ValueError, match=r"wrote opset 18, not the 17 asked for"):
        export_model(weights, tmp_path / "old.onnx", "onnx", opset=17)
    assert not list(tmp_path.iterdir())


def test_missing_onnx_packages_are_one_line_naming_the_extra(weights, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a)
    )
    status = main(["export", "--checkpoint", str(weights), "--out", str(tmp_path / "m.onnx")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert "needs onnxscript, which is not installed: pip install 'senet[onnx]'" in error
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "format, name, options, message",
    [
        ("exported-program", "m.pt", {}, "an ExportedProgram is a .pt2 file"),
        ("torchscript", "m.pt", {"opset": 18}, "--opset is an ONNX setting"),
        ("keras", "m.h5", {}, "unknown export format 'keras'"),
        ("torchscript", "m.pt", {"batch": 0}, "batch must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_named(format, name, options, message, weights, tmp_path):
    with pytest.raises(ValueError, match=message):
        export_model(weights, tmp_path / name, format, **options)
    assert not list(tmp_path.iterdir())


def test_bench_times_the_onnx_export_beside_eager(capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # --no-memory: peak memory is measured in fresh processes (~15 s), the same way for every row
    argv = "bench --models se_resnet20_cifar --onnx --size 32 --repeats 1 --warmup 0 --no-memory".split()
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| se_resnet20_cifar")]
    assert [row.split(" | ")[0] for row in rows] == ["| se_resnet20_cifar", "| se_resnet20_cifar+onnxruntime"]
    assert all(float(row.split(" | ")[1]) > 0 for row in rows)  # a latency measured for both


def test_bench_refuses_onnx_rows_it_would_not_time_as_asked(capsys):
    argv = "bench --models se_resnet20_cifar --onnx --size 32 --mode train".split()
    assert main(argv) == 2
    assert "needs mode infer, device cpu and no amp (got mode train" in capsys.readouterr().err
