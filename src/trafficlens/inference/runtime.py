"""Inference-only rewrites of a trained model: the same outputs, less work per session."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from trafficlens.inference.onnx_cache import OnnxModel, cache_path, open_model
from trafficlens.training.metrics import softmax as _softmax


def fold_batch_norm(model: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution or linear layer inside an
    `nn.Sequential` into that layer's weights (eval statistics); returns how many were folded.

    In eval mode a batch norm is an affine map per channel, so conv -> BN equals one conv with
    scaled weights and a bias: one pass over the activations instead of two (about 10% of
    chen-cnn's CPU inference, measured). Only call on a copy in eval mode, and check the outputs
    (`folded_for_inference` does): a Linear followed by a BatchNorm1d over another axis would
    not be the same function.
    """
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            a, b = module._modules[first], module._modules[second]
            if isinstance(a, (nn.Conv1d, nn.Conv2d)) and isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d)) \
                    and b.track_running_stats and a.out_channels == b.num_features:
                module._modules[first] = fuse_conv_bn_eval(a, b)
            elif isinstance(a, nn.Linear) and isinstance(b, nn.BatchNorm1d) and b.track_running_stats \
                    and a.out_features == b.num_features:
                module._modules[first] = fuse_linear_bn_eval(a, b)
            else:
                continue
            module._modules[second] = nn.Identity()
            folded += 1
    return folded


def folded_for_inference(model: nn.Module, probe: list[torch.Tensor], atol: float = 1e-4) -> nn.Module:
    """A batch-norm-folded copy of `model` when it gives the same probabilities on `probe`
    (within `atol`), else `model` itself."""
    was_training = model.training
    model.eval()
    candidate = copy.deepcopy(model)
    if not fold_batch_norm(candidate):
        model.train(was_training)
        return model
    with torch.inference_mode():
        expect = torch.softmax(model(*probe).float(), dim=1)
        got = torch.softmax(candidate(*probe).float(), dim=1)
    model.train(was_training)
    same = bool(torch.allclose(expect, got, atol=atol, rtol=0))
    return candidate if same else model


def probe_inputs(inputs: tuple[str, ...], shapes: dict[str, tuple[int, ...]], n: int = 64,
                 device: str | torch.device = "cpu", seed: int = 0) -> list[torch.Tensor]:
    """Random model inputs of the dataset's tensor shapes and dtypes (bytes as uint8)."""
    rng = np.random.default_rng(seed)
    out = []
    for name in inputs:
        if name in ("image", "packets"):
            x = torch.from_numpy(rng.integers(0, 256, (n, *shapes[name]), dtype=np.uint8))
        else:
            x = torch.from_numpy(rng.normal(size=(n, *shapes[name])).astype(np.float32))
        out.append(x.to(device))
    return out


class WithEmbedding(nn.Module):
    """A registered model's (logits, embedding): the embedding is the vector before its last layer
    (`forward_head(..., pre_logits=True)`; an ensemble's members side by side), scaled to unit
    length, what the open-set distance (`inference.open_set`) compares with the training sessions'."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(model.training)  # else exporting it (which restores the wrapper's mode) puts `model` in training mode

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(*xs)
        embedding = self.model.forward_head(features, pre_logits=True).flatten(1).float()
        return self.model.forward_head(features), torch.nn.functional.normalize(embedding, dim=1)


def onnx_for_inference(model: nn.Module, probe: list[torch.Tensor], threads: int,
                       atol: float = 1e-4, names: list[str] | None = None,
                       cache_key: str | None = None) -> OnnxModel | None:
    """`model` exported to ONNX Runtime when onnxruntime is installed, the export works and its
    probabilities match the model's on `probe` (whole, and an odd-sized slice: the batch axis is
    dynamic); else None, and the caller keeps PyTorch. `names`: the ONNX inputs' names (input0, ...).
    The graph has two outputs, `logits` and `embedding` (`WithEmbedding`), the second checked
    against PyTorch's too; a model whose embedding does not export is exported with logits only.

    `cache_key` (a hash of the bundle, see `onnx_cache_key`): the export is kept in the user's
    cache directory under that key and reused by later runs of the same bundle, which then skip
    the export (most of a small `predict`'s start-up). A cached model is used only under its own
    key and only after it passes the same probe check as a fresh export; one that fails is
    replaced. A cache that cannot be read or written is skipped silently."""
    import io
    import warnings

    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    names = list(names) if names else [f"input{i}" for i in range(len(probe))]
    model.eval()

    embedded = WithEmbedding(model.eval()) if hasattr(model, "forward_features") else None

    def checked(model_bytes: bytes) -> OnnxModel | None:
        compiled = open_model(model_bytes, names, threads)
        with torch.inference_mode():
            for part in (probe, [x[:3] for x in probe]):
                expect = torch.softmax(model(*part).float(), dim=1).numpy()
                got = _softmax(compiled(*[x.cpu().numpy() for x in part]))
                if got.shape != expect.shape or not np.allclose(got, expect, atol=atol, rtol=0):
                    return None
                if compiled.has_embedding:
                    want, have = embedded(*part)[1].numpy(), compiled.outputs(*[x.cpu().numpy() for x in part])[1]
                    if have.shape != want.shape or not np.allclose(have, want, atol=1e-3, rtol=0):
                        return None
        return compiled

    cached = cache_path(cache_key)
    if cached is not None:
        try:
            hit = checked(cached.read_bytes())
            if hit is not None:
                return hit
        except Exception:  # noqa: BLE001  missing, unreadable or not a model: export again
            pass
    compiled = None
    for exported, outputs in ((embedded, ["logits", "embedding"]), (model, ["logits"])):
        if exported is None:
            continue
        try:
            with warnings.catch_warnings(), torch.inference_mode(), _native_stderr_silenced():
                warnings.simplefilter("ignore")
                buffer = io.BytesIO()
                torch.onnx.export(exported, tuple(probe), buffer, input_names=names, output_names=outputs,
                                  dynamic_axes={name: {0: "batch"} for name in names + outputs}, dynamo=False)
            compiled = checked(buffer.getvalue())
        except Exception:  # an operator the exporter or the runtime lacks: PyTorch it is
            compiled = None
        if compiled is not None:
            break
    if compiled is None:
        return None
    if cached is not None:
        try:
            from trafficlens.files import atomic_output

            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(cached, "wb") as fh:
                fh.write(compiled.model_bytes)
        except OSError:
            pass
    return compiled


@contextlib.contextmanager
def _native_stderr_silenced():
    """The TorchScript exporter writes its whole graph to the process's stderr from C++ when an
    operator cannot be exported (its log switch is always on in torch 2.13); that is expected
    here (we fall back to PyTorch), so file descriptor 2 points at /dev/null for the export."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
