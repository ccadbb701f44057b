"""A checkpoint as a file another program can run: ONNX, safetensors + a JSON sidecar, or a
`torch.export` program (.pt2).

Every format holds the eval-mode model (BatchNorm on its running statistics), optionally with
each BN folded into the adjacent dense layer (`fold_bn`, the same fold `/predict` serves). ONNX
and .pt2 take one float32 input, `input` of shape (batch, *input_shape) (a table's (batch, F),
images' (batch, C, H, W)) with a dynamic batch axis, and return `probabilities` (batch,
n_classes): the input standardisation (`training.standardize`) and the head that `/predict`
applies (one sigmoid unit -> [1 - p, p], otherwise softmax) are part of the graph, so outputs
equal `/predict`'s.

`safetensors` is a zip of `model.safetensors` (the `nn.Sequential` state dict; network logits,
no head), `model.json` (the sidecar: every module as a `torch.nn` class name and its constructor
arguments, the head, the classes, the job spec) and `README.txt` (the five lines that rebuild
it). The sidecar is also stored in the safetensors header (`bnlab_export`), so the weights file
alone still describes itself. Rebuilding needs only torch and safetensors (`rebuild` below is
that recipe); nothing is pickled.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from typing import Any, Literal

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from models.checkpoint import decode
from models.inference import serving_network
from models.network import GlobalAvgPool, Standardize, apply_head

Format = Literal["onnx", "safetensors", "torch_export"]
FORMATS: tuple[Format, ...] = ("onnx", "safetensors", "torch_export")
EXPORT_FORMAT = "bnlab-export/1"
# onnx's first opset with LayerNormalization (opset 17); 18 is the exporter's default.
ONNX_OPSET = 18


@dataclass(frozen=True)
class Artifact:
    content: bytes
    media_type: str
    extension: str  # with the dot: ".onnx", ".zip", ".pt2"


@dataclass(frozen=True)
class Source:
    """What an export says about where it came from (goes into ONNX metadata and the sidecar)."""

    job_id: str = ""
    kind: str = ""
    epoch: int | None = None
    sha256: str = ""


class WithHead(nn.Module):
    """The network plus `/predict`'s head: inputs -> class probabilities."""

    def __init__(self, network: nn.Sequential) -> None:
        super().__init__()
        self.network = network

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return apply_head(self.network(input))


def eval_network(blob: bytes, *, fold_bn: bool) -> tuple[nn.Sequential, dict[str, Any]]:
    """The checkpoint's network in eval mode (BN folded when asked; the input standardisation,
    if the job had one, in front) and its metadata."""
    cp = decode(blob)
    return serving_network(cp, fold_bn=fold_bn), cp.meta


def _classes(meta: dict[str, Any], classes: list[str] | None) -> list[str]:
    return list(classes) if classes is not None else [str(c) for c in meta["classes"]]


def _example(meta: dict[str, Any]) -> torch.Tensor:
    # Batch 2 for tracing: 1 would be specialised away by torch.export (0/1 specialisation).
    return torch.zeros(2, *_input_shape(meta))


def _input_shape(meta: dict[str, Any]) -> list[int]:
    net = meta["network"]
    return [int(d) for d in net.get("input_shape", [net["n_features"]])]


def _batch_dim() -> dict[str, dict[int, Any]]:
    return {"input": {0: torch.export.Dim("batch", min=1)}}


# ---------------------------------------------------------------------------------- onnx


def to_onnx(blob: bytes, *, fold_bn: bool, classes: list[str] | None = None,
            source: Source = Source()) -> bytes:
    """ONNX bytes via the dynamo exporter (needs onnxscript). ~1-4 s: cache the result."""
    model, meta = eval_network(blob, fold_bn=fold_bn)
    wrapped = WithHead(model).eval()
    # The exporter warns about optional torchvision ops it cannot register; not ours.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        # Unfolded, the graph keeps every BatchNormalization node as trained (the exporter's
        # optimizer would fuse some into their Gemm); folded, the optimizer may tidy the rest.
        program = torch.onnx.export(wrapped, (_example(meta),), dynamo=True, verbose=False,
                                    input_names=["input"], output_names=["probabilities"],
                                    dynamic_shapes=_batch_dim(), opset_version=ONNX_OPSET,
                                    optimize=fold_bn)
    finally:
        registration.setLevel(level)
    assert program is not None
    proto = program.model_proto
    props = {"bnlab.format": EXPORT_FORMAT, "bnlab.classes": json.dumps(_classes(meta, classes)),
             "bnlab.fold_bn": json.dumps(fold_bn), "bnlab.job_id": source.job_id,
             "bnlab.checkpoint": json.dumps({"kind": source.kind, "epoch": source.epoch,
                                             "sha256": source.sha256}),
             "bnlab.spec": json.dumps(meta.get("spec"))}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    shape = ", ".join(map(str, _input_shape(meta)))
    proto.doc_string = (f"bnlab eval-mode model: input (batch, {shape}) float32 -> "
                        "probabilities (batch, n_classes), class order in bnlab.classes")
    return bytes(proto.SerializeToString())


# ---------------------------------------------------------------------------- torch.export


def to_torch_export(blob: bytes, *, fold_bn: bool) -> bytes:
    """A `torch.export` program saved with `torch.export.save` (.pt2); load it with
    `torch.export.load(path).module()`."""
    model, meta = eval_network(blob, fold_bn=fold_bn)
    program = torch.export.export(WithHead(model).eval(), (_example(meta),),
                                  dynamic_shapes=_batch_dim())
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


# ------------------------------------------------------------------ safetensors + sidecar


def _module_entry(m: nn.Module) -> dict[str, Any]:
    """A module as its `torch.nn` class name and constructor arguments."""
    args: dict[str, Any]
    if isinstance(m, nn.Linear):
        args = {"in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    elif isinstance(m, nn.Conv2d):
        args = {"in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                "bias": m.bias is not None}
    elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.InstanceNorm2d):
        args = {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine, "track_running_stats": m.track_running_stats}
    elif isinstance(m, nn.GroupNorm):
        args = {"num_groups": m.num_groups, "num_channels": m.num_channels, "eps": m.eps,
                "affine": m.affine}
    elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        args = {"kernel_size": m.kernel_size, "stride": m.stride}
    elif isinstance(m, nn.AdaptiveAvgPool2d):
        args = {"output_size": m.output_size}
    elif isinstance(m, nn.Flatten):
        args = {"start_dim": m.start_dim, "end_dim": m.end_dim}
    elif isinstance(m, nn.LayerNorm):
        args = {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                "elementwise_affine": m.elementwise_affine}
    elif isinstance(m, nn.LeakyReLU):
        args = {"negative_slope": m.negative_slope}
    elif isinstance(m, nn.Softmax):
        args = {"dim": m.dim}
    elif isinstance(m, nn.GELU):
        args = {"approximate": m.approximate}
    elif isinstance(m, nn.Dropout):
        args = {"p": m.p}
    elif isinstance(m, nn.ReLU | nn.Tanh | nn.Sigmoid | nn.Identity):
        args = {}
    else:  # build_network makes nothing else; a new layer type must be described here
        raise TypeError(f"cannot describe module {type(m).__name__} for export")
    return {"type": type(m).__name__, "args": args}


README = """bnlab export: model.safetensors (weights) + model.json (how to rebuild them).

    import json, torch
    from safetensors.torch import load_file
    side = json.load(open("model.json"))
    net = torch.nn.Sequential(*(getattr(torch.nn, m["type"])(**m["args"])
                                for m in side["modules"])).eval()
    net.load_state_dict(load_file("model.safetensors"))
    x = torch.tensor(rows, dtype=torch.float32)         # (batch, *side["input"]["shape"])
    if side["input"]["mean"] is not None:               # training.standardize
        x = (x - torch.tensor(side["input"]["mean"])) / torch.tensor(side["input"]["std"])
    logits = net(x)
    # probabilities as /predict gives them (class order: side["classes"]):
    p = torch.sigmoid(logits); probs = torch.cat([1 - p, p], 1)   # side["output"] == "sigmoid"
    probs = torch.softmax(logits, 1)                                # side["output"] == "softmax"
"""


def sidecar(model: nn.Sequential, meta: dict[str, Any], *, fold_bn: bool,
            classes: list[str] | None, source: Source,
            standardize: Standardize | None = None) -> dict[str, Any]:
    net = meta["network"]
    inputs = {"mean": standardize.mean.tolist() if standardize is not None else None,
              "std": standardize.std.tolist() if standardize is not None else None}
    n_out = int(model[-1].out_features) if isinstance(model[-1], nn.Linear) else None
    return {
        "format": EXPORT_FORMAT,
        "job_id": source.job_id,
        "checkpoint": {"kind": source.kind or meta.get("kind"),
                       "epoch": source.epoch if source.epoch is not None else meta.get("epoch"),
                       "sha256": source.sha256},
        "fold_bn": fold_bn,
        "input": {"n_features": int(net["n_features"]), "shape": _input_shape(meta),
                  "dtype": "float32", **inputs},
        # The head /predict applies to the logits: one unit -> sigmoid [1-p, p], else softmax.
        "output": "sigmoid" if n_out == 1 else "softmax",
        "classes": _classes(meta, classes),
        "modules": [_module_entry(m) for m in model],
        "network": net,  # bnlab's resolved layers (as trained, before any fold)
        "spec": meta.get("spec"),
        "metrics": meta.get("metrics"),
    }


def to_safetensors_zip(blob: bytes, *, fold_bn: bool, classes: list[str] | None = None,
                       source: Source = Source()) -> bytes:
    model, meta = eval_network(blob, fold_bn=fold_bn)
    standardize = model[0] if isinstance(model[0], Standardize) else None
    # torch.nn classes only, so that the sidecar's recipe rebuilds it
    mods: list[nn.Module] = []
    for m in list(model)[1 if standardize is not None else 0:]:
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if isinstance(m, GlobalAvgPool) else [m]
    model = nn.Sequential(*mods)
    side = sidecar(model, meta, fold_bn=fold_bn, classes=classes, source=source,
                   standardize=standardize)
    text = json.dumps(side, indent=2)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = save_tensors(tensors, metadata={"format": EXPORT_FORMAT, "bnlab_export": text})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.safetensors", weights)
        z.writestr("model.json", text)
        z.writestr("README.txt", README)
    return buf.getvalue()


def rebuild(weights: bytes, side: dict[str, Any]) -> nn.Module:
    """The sidecar's recipe (torch + safetensors only): an eval-mode module from the exported
    weights that returns class probabilities, like the ONNX and .pt2 exports."""
    net = nn.Sequential(*(getattr(nn, m["type"])(**m["args"]) for m in side["modules"]))
    net.load_state_dict(load_tensors(weights), strict=True)
    inputs = side["input"]
    if inputs.get("mean") is not None:
        net = nn.Sequential(Standardize(torch.tensor(inputs["mean"]), torch.tensor(inputs["std"])),
                            *net)
    return WithHead(net).eval()


def read_safetensors_zip(content: bytes) -> tuple[bytes, dict[str, Any]]:
    """(weights, sidecar) from a `safetensors` export."""
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        return z.read("model.safetensors"), json.loads(z.read("model.json"))


# ---------------------------------------------------------------------------------- all


def export(blob: bytes, fmt: Format, *, fold_bn: bool, classes: list[str] | None = None,
           source: Source = Source()) -> Artifact:
    if fmt == "onnx":
        return Artifact(to_onnx(blob, fold_bn=fold_bn, classes=classes, source=source),
                        "application/octet-stream", ".onnx")
    if fmt == "safetensors":
        return Artifact(to_safetensors_zip(blob, fold_bn=fold_bn, classes=classes,
                                           source=source), "application/zip", ".zip")
    if fmt == "torch_export":
        return Artifact(to_torch_export(blob, fold_bn=fold_bn), "application/octet-stream",
                        ".pt2")
    raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
