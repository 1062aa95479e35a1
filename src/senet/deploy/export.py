"""``export_model``: a network as one file that runs without senet (ONNX, TorchScript, torch.export), checked
first.

The weights come in through :func:`senet.load_pretrained`. Every BatchNorm that follows a convolution is
folded into it (:func:`senet.deploy.optimize.fold_batchnorm`); the folding is done in float64 and checked
there against the unfolded network, so it adds nothing but the final rounding to float32 (or float16). The
file is then written under a temporary name beside ``out``, loaded back by the runtime that will run it
(onnxruntime's CPU provider, ``torch.jit.load``, ``torch.export.load``) and compared with the eager,
*unfolded* PyTorch network on random inputs. Only a file that passes is renamed into place: a failed check
leaves no file and never replaces an existing one, so a file that computes something else is never there to be
deployed.

Tolerances, on the largest absolute difference of the logits:

* float32: ``1e-4`` (:data:`FP32_TOLERANCE`). se_resnet50 in onnxruntime differs from PyTorch by ~1e-6.
* float16 (``fp16=True``: weights, input and output in half precision): ``1e-2 * max(1, max |logit|)``
  (:data:`FP16_RELATIVE_TOLERANCE`), against the float32 network fed the same (half-rounded) inputs. float16
  keeps 11 significant bits, a relative error of up to 5e-4 at each rounding, and a ResNet rounds at every
  layer. Measured in onnxruntime: 1.7e-3 for se_resnet50 (random weights and BN statistics, logits up to 2.8:
  6e-4 of their scale) and 4.6e-3 for an SE-ResNet-20 trained on digits (logits up to 6.6: 7e-4). 1e-2 of the
  scale leaves a margin of ~15x for deeper networks and other inputs, and still fails a wrong network, whose
  logits differ at their own scale.

The files hold the network's preprocessing and labels (ONNX ``metadata_props``; a ``senet.json`` extra file in
TorchScript and .pt2 archives), so a deployer needs neither senet nor the weights file to feed them right.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from senet.deploy.optimize import fold_batchnorm
from senet.fileio import atomic_write
from senet.weights.pretrained import load_pretrained

ExportFormat = Literal["onnx", "torchscript", "exported-program"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "exported-program")
FP32_TOLERANCE = 1e-4
FP16_RELATIVE_TOLERANCE = 1e-2
# Folding checked in float64: its error there is ~1e-15 of the logits, so 1e-9 only fails on a real mistake.
_FOLD_TOLERANCE = 1e-9
RECORD_FORMAT = "senet-export/1"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "exported-program": "torch.export.load"}
_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript", "exported-program": "ExportedProgram"}


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how well the written file reproduces PyTorch."""

    format: str
    path: Path
    size_bytes: int
    opset: int | None  # the ONNX opset written (None for the torch formats)
    dtype: str  # float32 or float16
    dynamic_batch: bool
    batches: tuple[int, ...]  # batch sizes of the random inputs checked (empty: not checked)
    max_abs_diff: float | None  # largest |file's logits - eager PyTorch's| over those inputs
    tolerance: float | None  # the bound max_abs_diff had to meet (absolute, on the logits)
    seconds: float
    batchnorms_folded: int
    batchnorms_kept: int  # BatchNorms that follow no conv (pre-activation units), left as they are
    runtime: str  # what loaded and ran the file for the check

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}

    def summary(self) -> str:
        """Two lines: what was written, and how it compares with PyTorch."""
        kind = _NAMES[self.format] + (f" opset {self.opset}" if self.opset is not None else "")
        kept = f", {self.batchnorms_kept} kept (not after a conv)" if self.batchnorms_kept else ""
        first = (
            f"wrote {self.path} ({kind}, {self.dtype}, {'dynamic' if self.dynamic_batch else 'fixed'} batch, "
            f"{self.size_bytes / 1e6:.1f} MB, {self.batchnorms_folded} BatchNorms folded{kept}) "
            f"in {self.seconds:.1f} s"
        )
        if self.max_abs_diff is None:
            return first + "\nnot checked against PyTorch"
        batches = " and ".join(str(b) for b in self.batches)
        return (
            f"{first}\nmax |{self.runtime} - PyTorch| = {self.max_abs_diff:.1e} on random inputs of batch "
            f"{batches} (tolerance {self.tolerance:.1e})"
        )


def export_model(
    source: str | Path,
    out: str | Path,
    format: ExportFormat = "onnx",
    *,
    weights: Literal["last", "best"] = "last",
    dynamic_batch: bool = False,
    opset: int | None = None,
    fp16: bool = False,
    batch: int = 2,
    check: bool = True,
    device: str = "cpu",
) -> ExportReport:
    """Write the network of ``source`` to ``out`` with BatchNorm folded, after checking the written file.

    Args:
        source: what :func:`senet.load_pretrained` takes: a senet weights file, a run directory of
            ``senet train`` (``weights`` picks its last checkpoint or best epoch) or a checkpoint JSON.
        out: the file to write (``.onnx``; ``.pt`` for TorchScript; ``.pt2`` for an ExportedProgram).
        format: ``"onnx"`` (torch.onnx's dynamo exporter; needs ``pip install 'senet[onnx]'``),
            ``"torchscript"`` (``torch.jit.trace``) or ``"exported-program"`` (``torch.export``).
        dynamic_batch: accept any batch size (checked at ``batch`` and ``batch + 1``); otherwise the ONNX and
            ExportedProgram files take ``batch`` images only.
        opset: the ONNX opset (default: the exporter's); one the exporter cannot produce is refused.
        fp16: weights, input and output in float16; checked to
            ``FP16_RELATIVE_TOLERANCE * max(1, max|logit|)`` (see the module doc) instead of
            ``FP32_TOLERANCE`` (1e-4).
        batch: images per random input of the check (and of a fixed-batch file).
        check: compare the written file with PyTorch; a difference above the tolerance raises ValueError and
            leaves no file.
        device: where the network is traced (``cpu`` or ``cuda``); onnxruntime checks on the CPU.

    The input has shape (batch, in_chans, input_size, input_size) from the weights' preprocessing; the file
    records that preprocessing and the labels.
    """
    if format == "onnx":
        require_onnx()  # before loading the weights: a missing package is the first thing to say

    model = load_pretrained(source, weights=weights).eval()
    info = model.pretrained_info
    size = info.preprocessing.input_size
    return export_module(
        model,
        out,
        format,
        input_shape=(info.preprocessing.in_chans, size, size),
        record=export_record(info),
        dynamic_batch=dynamic_batch,
        opset=opset,
        fp16=fp16,
        batch=batch,
        check=check,
        device=device,
    )


def export_record(info: Any) -> dict[str, Any]:
    """What a deployer needs from a :class:`~senet.weights.info.WeightsInfo`: model, labels, preprocessing."""
    pre = info.preprocessing
    return {
        "model": info.model,
        "num_classes": info.num_classes,
        "labels": info.labels,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "input_size": pre.input_size,
        "in_chans": pre.in_chans,
        "resize": pre.resize,
        "crop_fraction": pre.crop_fraction,
        "interpolation": pre.interpolation,
        "preprocessing": (
            f"resize the shorter side to {pre.resize} ({pre.interpolation}), centre-crop {pre.input_size}, "
            "scale pixels to [0, 1], subtract mean and divide by std per channel; NCHW layout"
        ),
        "weights": info.as_dict(),
    }


def require_onnx() -> None:
    """Fail in one line when a package the ONNX export needs is missing."""
    import importlib.util

    missing = [
        name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ValueError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            "installed: pip install 'senet[onnx]'"
        )


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """Switch off TF32 (cuDNN allows it for convolutions by default) and restore the settings after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@_full_float32()  # the check compares with float32 PyTorch, not with TF32 convolutions on a GPU
def export_module(
    model: nn.Module,
    out: str | Path,
    format: ExportFormat = "onnx",
    *,
    input_shape: tuple[int, int, int],
    record: dict[str, Any] | None = None,
    dynamic_batch: bool = False,
    opset: int | None = None,
    fp16: bool = False,
    batch: int = 2,
    check: bool = True,
    device: str = "cpu",
) -> ExportReport:
    """:func:`export_model` for a network already built: ``input_shape`` is (channels, height, width), and
    ``record`` (JSON-serialisable) is stored in the file. ``model`` itself is left untouched."""
    start = time.perf_counter()
    _check_arguments(format, opset, batch, input_shape)
    if format == "onnx":
        require_onnx()
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the file to write, e.g. {out / 'model'}.onnx")
    if format == "exported-program" and out.suffix != ".pt2":
        raise ValueError(
            f"--out {out}: an ExportedProgram is a .pt2 file (torch.export.load wants that suffix)"
        )
    target = torch.device(device)
    reference = copy.deepcopy(model).float().eval().requires_grad_(False).to(target)
    folded, batchnorms_folded, batchnorms_kept = _fold_checked(reference, input_shape)
    dtype = torch.float16 if fp16 else torch.float32
    folded = folded.to(dtype)
    record = {
        "format": RECORD_FORMAT,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_dtype": str(dtype).removeprefix("torch."),
        "input_shape": ["batch" if dynamic_batch else batch, *input_shape],
        "batchnorms_folded": batchnorms_folded,
        **(record or {}),
    }
    generator = torch.Generator().manual_seed(0)
    # torch.export specialises a dimension of size 1: a dynamic batch is traced at 2 or more.
    traced_batch = max(batch, 2) if dynamic_batch else batch
    example = torch.randn(traced_batch, *input_shape, generator=generator).to(target, dtype)
    found: dict[str, Any] = {"opset": None, "batches": (), "worst": None, "tolerance": None}

    def write_and_check(temporary: Path) -> None:
        """Write the file, then load it in its runtime and compare: a failure leaves nothing
        (atomic_write)."""
        nonlocal folded
        with torch.no_grad():
            _WRITERS[format](folded, example, temporary, dynamic_batch, opset, record)
        folded = None  # free it before the runtime loads the file
        found["opset"] = _onnx_opset(temporary) if format == "onnx" else None
        if opset is not None and found["opset"] != opset:
            raise ValueError(
                f"the ONNX exporter wrote opset {found['opset']}, not the {opset} asked for "
                f"(it cannot convert this network to {opset}); use --opset {found['opset']} or later"
            )
        if not check:
            return
        batches = (batch, batch + 1) if dynamic_batch else (batch,)
        run = _LOADERS[format](temporary, target, fp16)
        worst, tolerance = _compare(run, reference, batches, input_shape, dtype, target, generator)
        if not worst <= tolerance:  # also catches NaN
            raise ValueError(
                f"the exported {_NAMES[format]} file differs from PyTorch by up to {worst:.3g} on random "
                f"inputs, more than the tolerance {tolerance:.1e}; nothing was written to {out}"
            )
        found.update(batches=batches, worst=worst, tolerance=tolerance)

    # The temporary file keeps the suffix: torch.export.load insists on .pt2.
    atomic_write(out, write_and_check, suffix=f".partial{out.suffix}")
    return ExportReport(
        format=format,
        path=out,
        size_bytes=out.stat().st_size,
        opset=found["opset"],
        dtype=str(dtype).removeprefix("torch."),
        dynamic_batch=dynamic_batch,
        batches=found["batches"],
        max_abs_diff=found["worst"],
        tolerance=found["tolerance"],
        seconds=time.perf_counter() - start,
        batchnorms_folded=batchnorms_folded,
        batchnorms_kept=batchnorms_kept,
        runtime=_RUNTIMES[format],
    )


def _check_arguments(format: str, opset: int | None, batch: int, input_shape: tuple[int, ...]) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if opset is not None and format != "onnx":
        raise ValueError(f"--opset is an ONNX setting; {format} has none")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ValueError(f"opset must be an integer >= 7, got {opset!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if len(input_shape) != 3 or any(not isinstance(n, int) or n < 1 for n in input_shape):
        raise ValueError(
            f"input_shape must be (channels, height, width) of positive integers, got {input_shape}"
        )


def _count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _fold_checked(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[nn.Module, int, int]:
    """``model`` with its conv -> BN pairs folded, in float64 and checked there; and the BN counts."""
    wide = copy.deepcopy(model).double()
    folded = fold_batchnorm(wide)
    before, after = _count_batchnorms(wide), _count_batchnorms(folded)
    device = next(wide.parameters()).device
    x = torch.randn(1, *input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(
        device
    )
    with torch.no_grad():
        expected, got = wide(x), folded(x)
    difference = (got - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    if not difference <= _FOLD_TOLERANCE * scale:
        raise ValueError(
            f"folding BatchNorm changed the float64 logits by {difference:.3g} (> {_FOLD_TOLERANCE:.0e} x "
            f"{scale:.3g}): a bug in senet.deploy.optimize.fold_batchnorm for this network; please report it"
        )
    return folded.requires_grad_(False), before - after, after


def _compare(
    run: Callable[[torch.Tensor], torch.Tensor],
    reference: nn.Module,
    batches: tuple[int, ...],
    input_shape: tuple[int, int, int],
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator,
) -> tuple[float, float]:
    """Largest |run(x) - reference(x)| over random inputs of each batch size, and the tolerance it must
    meet."""
    worst, scale = 0.0, 1.0
    for size in batches:
        x = torch.randn(size, *input_shape, generator=generator).to(device, dtype)
        with torch.no_grad():
            expected = reference(x.float()).double().cpu()  # the inputs the file gets, in float32
        got = run(x).double().cpu()
        if got.shape != expected.shape:
            raise ValueError(
                f"the exported file returns shape {tuple(got.shape)} for batch {size}, "
                f"PyTorch {tuple(expected.shape)}"
            )
        difference = (got - expected).abs().max().item()
        worst = difference if math.isnan(difference) else max(worst, difference)
        if math.isnan(worst):
            break
        scale = max(scale, expected.abs().max().item())
    tolerance = FP16_RELATIVE_TOLERANCE * scale if dtype == torch.float16 else FP32_TOLERANCE
    return worst, tolerance


def _batch_dim(dynamic_batch: bool) -> tuple[dict[int, Any]] | None:
    return ({0: torch.export.Dim("batch")},) if dynamic_batch else None


def _write_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, dynamic: bool, opset: int | None, record: dict
) -> None:
    program = torch.onnx.export(
        module,
        (example,),
        None,
        dynamo=True,  # the TorchScript-based exporter is deprecated
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes=_batch_dim(dynamic),
        verbose=False,
    )
    # metadata_props take strings: plain ones stay as they are, the rest as JSON.
    program.model.metadata_props.update(
        {
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in record.items()
            if value is not None
        }
    )
    program.save(str(path), external_data=False)  # one file, so that the rename moves all of it


def _onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _write_torchscript(
    module: nn.Module, example: torch.Tensor, path: Path, dynamic: bool, opset: int | None, record: dict
) -> None:
    with warnings.catch_warnings():
        # torch deprecates TorchScript in favour of torch.export; the format is still what many runtimes load.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        traced = torch.jit.trace(module, (example,))
        torch.jit.save(traced, str(path), _extra_files={"senet.json": json.dumps(record)})


def _write_exported_program(
    module: nn.Module, example: torch.Tensor, path: Path, dynamic: bool, opset: int | None, record: dict
) -> None:
    program = torch.export.export(module, (example,), dynamic_shapes=_batch_dim(dynamic))
    torch.export.save(program, str(path), extra_files={"senet.json": json.dumps(record)})


_WRITERS: dict[str, Callable[..., None]] = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
    "exported-program": _write_exported_program,
}


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads (default: torch's count)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    # Idle worker threads otherwise spin for a while after each run, taking the cores from whatever runs next
    # (PyTorch, timed interleaved with it by senet bench).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _load_onnx(path: Path, device: torch.device, fp16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        session = onnx_session(path)
    except Exception as error:  # onnxruntime's error types live in its compiled module
        if fp16 and "NOT_IMPLEMENTED" in str(error):
            reason = str(error).strip().splitlines()[0]
            raise ValueError(
                f"onnxruntime's CPU provider cannot run this network in float16 ({reason}); export without "
                "--fp16, or run the float16 file on a provider that has the kernel"
            ) from None
        raise

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0])

    return run


def _load_torchscript(path: Path, device: torch.device, fp16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        module = torch.jit.load(str(path), map_location=device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def _load_exported_program(
    path: Path, device: torch.device, fp16: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


_LOADERS: dict[str, Callable[[Path, torch.device, bool], Callable[[torch.Tensor], torch.Tensor]]] = {
    "onnx": _load_onnx,
    "torchscript": _load_torchscript,
    "exported-program": _load_exported_program,
}
