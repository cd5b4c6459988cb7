"""Which bytes, which protocol fields: explanations of a trained run, per session and per class.

Per model family (none of them is modified; everything goes through `forward_features` /
`forward_head`, module hooks and the attention weights the layers keep):

- image models with convolutions (`chen-cnn`, `wang-*`, `ge-inception-capsnet`, the CNN branch
  of `ge-cnn-lstm`, `chen-model-a`, `chen-model-b`): Grad-CAM (Selvaraju et al. 2017; Chen 2023
  Figure 4) on the last convolutional map, upsampled to the image and drawn over it in grey;
- `chen-gru` (no convolution): gradient x input on its byte embeddings;
- `chen-han`: its byte-level and packet-level attention (Chen 2023 Table 4); a byte's weight is
  its packet's attention times its attention within the packet, so the map sums to 1;
- `ge-elmo-lstm-attention` and the packet branch of `ge-cnn-lstm`: packet-level self-attention
  (how much each packet is attended to, averaged over the packets that attend) and gradient x
  input on the packets' bytes;
- `tl-fusion`: its attention pooling over the packets, and gradient x input on the embeddings
  of the packets' bytes;
- `chen-model-a`: also its feature-attention distribution alpha over the 128 spatial (CNN) and
  128 sequential (GRU) features (Chen 2023 Figure 11).

Every byte map is normalised to sum 1 per session and summed by protocol field
(`trafficlens.prep.tensors.fields`), so "62% of the weight is on `tls.record.length`" reads
directly. The per-class summary averages those shares over a class's sessions and flags fields
that name a host or a capture rather than an application: a shortcut detector.

    from trafficlens.explain.maps import explain_session, explain_per_class
    exp = explain_session("runs/cnn", 123)
    summary = explain_per_class("runs/cnn", per_class=50)
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trafficlens.pages import figure_png, page, pyplot
from trafficlens.errors import BundleError, ConfigError, DatasetError

METHOD_GRAD_CAM = "grad-cam"
METHOD_HIRES_CAM = "hires-cam"
CAMS = (METHOD_GRAD_CAM, METHOD_HIRES_CAM)
METHOD_GRADIENT_INPUT = "gradient-x-input"
METHOD_ATTENTION = "attention"


@dataclass
class ExplainConfig:
    """Settings of `explain`; `target` None explains the predicted class (sessions) or the true
    class (per-class summaries)."""

    target: str | None = None
    cam: str = METHOD_GRAD_CAM  # or hires-cam, faithful for heads that flatten the map (chen-cnn, wang-*)
    top: int = 15  # fields listed per session and per class
    per_class: int = 50  # sessions per class in the summary
    split: str = "test"  # rows the summary draws from: test (the run's test split) or all
    batch_size: int = 64
    seed: int = 0
    captures: tuple[str, ...] = ()  # where the captures are when the dataset's `sources` moved

    def __post_init__(self) -> None:
        if self.cam not in CAMS:
            raise ConfigError(f"cam must be one of {', '.join(CAMS)}, got {self.cam!r}")
        if self.split not in ("test", "all"):
            raise ConfigError(f"split must be test or all, got {self.split!r}")
        for name in ("top", "per_class", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Maps:
    """Explanation maps of a batch of n sessions (each byte map sums to 1 per session, or is 0)."""

    probabilities: np.ndarray  # (n, classes)
    targets: np.ndarray  # (n,) class explained
    image: np.ndarray | None = None  # (n, K) weight per image byte
    image_method: str | None = None
    packets: np.ndarray | None = None  # (n, M, B) weight per packet byte
    packets_method: str | None = None
    packet_attention: np.ndarray | None = None  # (n, M)
    byte_attention: np.ndarray | None = None  # (n, M, B), each packet's row sums to 1
    feature_attention: np.ndarray | None = None  # (n, F) Model A's alpha
    grad_cam_grid: tuple[int, ...] | None = None  # size of the convolutional map behind the image map


# -- maps from a model ----------------------------------------------------------------------------
def _normalise(x: np.ndarray) -> np.ndarray:
    """Per session (first axis) to sum 1; all-zero sessions stay zero."""
    x = np.nan_to_num(np.maximum(x, 0).astype(np.float64))
    total = x.reshape(len(x), -1).sum(axis=1)
    shape = (len(x),) + (1,) * (x.ndim - 1)
    return np.where(total.reshape(shape) > 0, x / np.where(total > 0, total, 1).reshape(shape), 0.0)


def _last_conv(model):
    import torch.nn as nn

    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    return convs[-1] if convs else None


def explain_tensors(model, tensors: dict[str, np.ndarray], targets: np.ndarray | None = None,
                    device: Any = "cpu", cam: str = METHOD_GRAD_CAM) -> Maps:
    """Explanation maps for stacked dataset tensors (keyed by tensor name) of one batch.

    `targets` are class indices to explain (default: the predicted ones). `cam`: `grad-cam`
    weighs each channel by its spatially averaged gradient; `hires-cam` (Draelos and Carin 2020)
    multiplies gradient and activation position by position, which stays faithful when the head
    flattens the map instead of pooling it (Grad-CAM's averaged weights can then cancel out and
    leave an empty map). Inputs are fed as float tensors holding the byte values, which every
    model reads exactly as its uint8 input (`x.float() / 255`, `x.long()`), so gradients reach
    the inputs without changing the models.
    """
    if cam not in CAMS:
        raise ConfigError(f"cam must be one of {', '.join(CAMS)}, got {cam!r}")
    import torch

    from trafficlens.models.layers import FeatureWeighting

    model.eval()
    inputs = list(model.inputs)
    xs = [torch.from_numpy(np.ascontiguousarray(tensors[name])).to(device=device, dtype=torch.float32).requires_grad_(True)
          for name in inputs]
    probs, chosen, activations, embeddings, grads = _forward_backward(model, inputs, xs, targets)
    maps = Maps(probabilities=probs.detach().cpu().numpy(), targets=chosen.detach().cpu().numpy())
    modules = dict(model.named_modules())
    if "image" in inputs:
        _image_map(maps, xs[inputs.index("image")], activations, embeddings, grads, cam,
                   getattr(getattr(model, "cfg", None), "image_side", None))
    if "packets" in inputs:
        _packet_map(maps, xs[inputs.index("packets")], modules, embeddings, grads)
    weighting = [m.weights for m in modules.values() if isinstance(m, FeatureWeighting) and m.weights is not None]
    if weighting:
        maps.feature_attention = weighting[0].float().cpu().numpy()
    return maps


def _forward_backward(model, inputs: list[str], xs, targets):
    """One forward pass with hooks on the last convolution and the byte embeddings, then the
    gradients of the chosen classes' logits: (probabilities, chosen, activations, embeddings,
    gradients by tensor id)."""
    import torch
    import torch.nn as nn

    activations: list = []
    embeddings: list = []
    handles = []
    if "image" in inputs:
        conv = _last_conv(model)
        if conv is not None:
            handles.append(conv.register_forward_hook(lambda m, i, o: activations.append(o)))
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            handles.append(module.register_forward_hook(lambda m, i, o: embeddings.append(o)))
    try:
        with torch.enable_grad():
            feats = model.features_for_gradients(*xs)  # frozen parts too, so that Grad-CAM reaches them
            if "image" in inputs and feats.dim() == 4:  # a spatial map: Grad-CAM on it directly
                activations.append(feats)
            logits = model.forward_head(feats)
            probs = torch.softmax(logits.float(), dim=1)
            chosen = probs.argmax(dim=1) if targets is None else torch.as_tensor(np.asarray(targets), device=logits.device)
            score = logits.gather(1, chosen.long().view(-1, 1)).sum()
            wrt = [t for t in (activations[-1:] + embeddings + xs) if t.requires_grad]
            grads = dict(zip(map(id, wrt), torch.autograd.grad(score, wrt, allow_unused=True)))
    finally:
        for h in handles:
            h.remove()
    return probs, chosen, activations, embeddings, grads


def _image_map(maps: Maps, x, activations, embeddings, grads, cam: str, model_side: int | None = None) -> None:
    """Grad-CAM where a convolution sees the image, else gradient x input on the byte embeddings.
    `model_side`: the side of the picture the model makes of the image (the Ge models read the
    first side * side bytes of a longer one); the map covers those bytes, 0 after them."""
    import torch
    import torch.nn.functional as F

    n, k = x.shape[0], x.shape[1]
    if activations and grads.get(id(activations[-1])) is not None:
        a, g = activations[-1].detach(), grads[id(activations[-1])].detach()
        spatial = tuple(range(2, a.dim()))
        weights = g if cam == METHOD_HIRES_CAM else g.mean(dim=spatial, keepdim=True)
        heat = torch.relu((weights * a).sum(dim=1, keepdim=True))  # (n, 1, h[, w])
        maps.grad_cam_grid = tuple(a.shape[2:])
        side = model_side if model_side and model_side * model_side <= k else int(round(k ** 0.5))
        if a.dim() == 4 and (side * side == k or side == model_side):  # all K, or its first side**2
            heat = F.interpolate(heat.float(), size=(side, side), mode="bilinear", align_corners=False)
            heat = F.pad(heat.reshape(n, side * side), (0, k - side * side))
        else:
            heat = F.interpolate(heat.float().flatten(2), size=k, mode="linear", align_corners=False)
        maps.image = _normalise(heat.reshape(n, k).cpu().numpy())
        maps.image_method = cam
    elif embeddings and grads.get(id(embeddings[0])) is not None:
        e = embeddings[0]
        attr = (grads[id(e)] * e).sum(dim=-1).abs().detach().reshape(n, -1).cpu().numpy()  # (n, tokens)
        full = np.zeros((n, k))
        full[:, : attr.shape[1]] = attr[:, :k]
        maps.image = _normalise(full)
        maps.image_method = METHOD_GRADIENT_INPUT


def _packet_map(maps: Maps, x, modules: dict, embeddings, grads) -> None:
    """HAN's byte and packet attention, else gradient x input on the byte values, or on the
    bytes' embeddings where the model embeds them (`tl-fusion`: the values are only indices)."""
    import torch

    from trafficlens.models.layers import AdditiveAttention, DotSelfAttention

    byte_att = [m.weights for name, m in modules.items() if isinstance(m, AdditiveAttention) and name.endswith("byte_attention")]
    packet_add = [m.weights for name, m in modules.items() if isinstance(m, AdditiveAttention) and name.endswith("packet_attention")]
    self_att = [m.weights for m in modules.values() if isinstance(m, DotSelfAttention) and m.weights is not None]
    if packet_add and packet_add[0] is not None:  # an ensemble's members (models/ensemble.py): their mean
        maps.packet_attention = torch.stack(packet_add).float().mean(dim=0).cpu().numpy()
    elif self_att:
        maps.packet_attention = self_att[0].float().mean(dim=1).cpu().numpy()  # column means: attention received
    if byte_att and byte_att[0] is not None and maps.packet_attention is not None:
        maps.byte_attention = byte_att[0].float().cpu().numpy()
        maps.packets = _normalise(maps.packet_attention[:, :, None] * maps.byte_attention)
        maps.packets_method = METHOD_ATTENTION
    elif grads.get(id(x)) is not None:
        maps.packets = _normalise((grads[id(x)] * x).abs().detach().cpu().numpy())
        maps.packets_method = METHOD_GRADIENT_INPUT
    else:
        import torch.nn as nn

        embedded = [e for e in embeddings if tuple(e.shape[:3]) == tuple(x.shape) and grads.get(id(e)) is not None]
        tables = [m.weight for m in modules.values() if isinstance(m, nn.Embedding) and m.num_embeddings == 256]
        if embedded and tables:  # (n, M, B, e) -> (n, M, B)
            # measured from the embedding of byte 0 (masked, padding) as gradient x input is from
            # value 0: a masked byte carries no weight, as in the models that read byte values.
            # An ensemble embeds in every member (forward order = module order): their sum.
            zeros = [w[0] for w in tables if w.shape[1] == embedded[0].shape[-1]]
            total = sum((grads[id(e)] * (e - zero)).sum(dim=-1) for e, zero in zip(embedded, zeros))
            maps.packets = _normalise(total.abs().detach().cpu().numpy())
            maps.packets_method = METHOD_GRADIENT_INPUT


def position_names(image_bytes: int, packets: int, packet_bytes: int):
    """Names by position only, for sessions whose capture is not at hand."""
    from trafficlens.prep.tensors.fields import TensorFields

    return TensorFields("unknown", [f"image[{i}]" for i in range(image_bytes)], np.full(image_bytes, -1, dtype=np.int32),
                        [[f"packet[{m}][{b}]" for b in range(packet_bytes)] for m in range(packets)])


def field_weights(maps: Maps, i: int, fields, image: np.ndarray | None = None,
                  packets: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, int], dict[str, int]]:
    """Session i's weight per field (summing to 1 over the maps it has), positions per field, and
    positions per field holding a non-zero byte (none: masked or constant, so no shortcut there)."""
    weight: dict[str, float] = {}
    count: dict[str, int] = {}
    nonzero: dict[str, int] = {}
    parts = []
    if maps.image is not None:
        parts.append((fields.image, maps.image[i].ravel(), image))
    if maps.packets is not None:
        parts.append(([name for row in fields.packets for name in row], maps.packets[i].ravel(), packets))
    for names, w, values in parts:
        scale = 1.0 / len(parts)  # a model with both maps (ge-cnn-lstm) splits its weight evenly
        keys, inverse = np.unique(np.asarray(names), return_inverse=True)
        sums = np.bincount(inverse, weights=w, minlength=len(keys)) * scale
        counts = np.bincount(inverse, minlength=len(keys))
        live = np.bincount(inverse, weights=np.asarray(values).ravel() != 0, minlength=len(keys)) if values is not None else counts
        for key, s, c, z in zip(keys.tolist(), sums.tolist(), counts.tolist(), live.tolist()):
            weight[key] = weight.get(key, 0.0) + s
            count[key] = count.get(key, 0) + c
            nonzero[key] = nonzero.get(key, 0) + int(z)
    return weight, count, nonzero


def top_fields(weight: dict[str, float], share: dict[str, float], live: dict[str, float], top: int,
               masked: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The `top` fields with weight, with lift = weight / share of positions the field fills and
    `nonzero` = share of its bytes that are not zero. An identifying field counts as a shortcut
    only where it holds values: weight smeared onto masked (all-zero) bytes carries nothing.
    Fields in `masked` that hold no value here (the mask zeroed them) are never ranked: the
    upsampled Grad-CAM map spills onto them, but no byte of theirs reached the model
    (`masked_fields` lists them apart)."""
    rows = sorted(((k, w) for k, w in weight.items() if w > 0 and not _was_masked(k, live, masked)),
                  key=lambda item: -item[1])[:top]
    return [{"field": name, "weight": round(w, 6), "positions": round(share.get(name, 0.0), 6),
             "lift": round(w / share[name], 3) if share.get(name) else None, "nonzero": round(live.get(name, 0.0), 4),
             "identifying": is_shortcut(name, live.get(name, 0.0))}
            for name, w in rows]


def masked_fields(weight: dict[str, float], live: dict[str, float], masked: frozenset[str]) -> list[dict[str, Any]]:
    """The fields the mask zeroed, with the share of the map that fell on them anyway."""
    return [{"field": k, "weight": round(w, 6), "masked": True}
            for k, w in sorted(weight.items(), key=lambda item: -item[1]) if _was_masked(k, live, masked)]


def _was_masked(name: str, live: dict[str, float], masked: frozenset[str]) -> bool:
    return name in masked and live.get(name, 0.0) == 0


def mask_fields(mask: str | None) -> frozenset[str]:
    """The fields a dataset's mask zeroes (`prep.tensors.fields.MASKED`)."""
    from trafficlens.prep.tensors.fields import MASKED

    return MASKED.get(mask or "none", MASKED["none"])


def blank_reason(method: str | None, target: str) -> str:
    """Why a map is zero everywhere, in words for the page and the JSON."""
    if method in (METHOD_GRAD_CAM, METHOD_HIRES_CAM):
        return (f"{method} is zero everywhere: at every position of the last convolution the gradient-weighted "
                f"activations sum to a negative value, which the ReLU clips, so no region raises the score of {target}"
                + (" (averaged gradients can cancel when the head flattens the map: try --cam hires-cam)"
                   if method == METHOD_GRAD_CAM else ""))
    return f"{method or 'the map'} is zero everywhere: no input byte moves the score of {target}"


def field_groups(weight: dict[str, float]) -> dict[str, float]:
    """Weight per protocol layer (eth, ip, ipv6, tcp, udp, tls, payload, padding): the coarse view,
    since payload offsets each get their own field name."""
    groups: dict[str, float] = {}
    for name, w in weight.items():
        group = "padding" if name == "(padding)" else name.split(".")[0].split("[")[0]
        groups[group] = groups.get(group, 0.0) + w
    return {k: round(v, 6) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


def is_shortcut(name: str, nonzero: float) -> bool:
    from trafficlens.prep.tensors.fields import IDENTIFYING

    return name in IDENTIFYING and nonzero > 0


# -- runs and datasets ----------------------------------------------------------------------------
@dataclass
class _Context:
    clf: Any
    ds: Any
    run: Path
    assignment: np.ndarray | None
    label_index: dict[str, int] = field(default_factory=dict)


def _open(run: str | os.PathLike, dataset: str | os.PathLike | None) -> _Context:
    from trafficlens.datasets import Dataset
    from trafficlens.inference.classifier import Classifier
    from trafficlens.inference.classifier import TENSOR_SETTINGS

    run = Path(run)
    clf = Classifier.load(run, device="auto")
    if clf.kind == "baseline":
        raise BundleError(f"{run}: explanations (Grad-CAM, attention, gradients) need a deep model; "
                          f"{clf.bundle.name} is a baseline")
    path = dataset or (clf.bundle.config.get("dataset") or {}).get("path")
    if not path:
        raise BundleError(f"{run}: config.json names no dataset; pass --dataset")
    ds = Dataset.open(path)
    mismatch = {k: (v, ds.config.get(k)) for k, v in clf.bundle.preprocessing.items()
                if k in TENSOR_SETTINGS and ds.config.get(k) != v}
    if mismatch:
        raise DatasetError(f"{ds.path}: prepared with other settings than {run} was trained on ({mismatch}); pass its own --dataset")
    from trafficlens.training.bundle import read_split

    assignment = read_split(run, len(ds)) if (run / "split.npy").is_file() else None
    return _Context(clf, ds, run, assignment, {label: i for i, label in enumerate(clf.labels)})


def _fields_for(ctx: _Context, rows: list[int], cfg: ExplainConfig) -> tuple[dict[int, Any], str]:
    """Field names of rows' tensors, rebuilt from their captures; by position where none is found."""
    from trafficlens.prep.tensors.fields import dataset_layouts, tensor_fields

    c = ctx.ds.config
    layouts = dataset_layouts(ctx.ds, rows, cfg.captures)
    image = ctx.ds.tensor("image")
    out = {}
    for r in rows:
        if r in layouts:
            out[r] = tensor_fields(image[r], layouts[r], c["layer"], c["packets"], c["packet_bytes"])
        else:
            out[r] = position_names(c["image_bytes"], c["packets"], c["packet_bytes"])
    missing = len(rows) - len(layouts)
    note = "capture" if not missing else f"capture for {len(layouts)} of {len(rows)} sessions (others by position: capture not found)"
    return out, note


def _maps(ctx: _Context, rows: np.ndarray, targets: np.ndarray | None, batch: int, cam: str = METHOD_GRAD_CAM) -> Maps:
    parts = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        tensors = {name: ctx.ds.tensor(name)[chunk] for name in ctx.clf.inputs}
        parts.append(explain_tensors(ctx.clf.bundle.model, tensors, None if targets is None else targets[start : start + batch],
                                     ctx.clf.device, cam))
    merged = Maps(np.concatenate([p.probabilities for p in parts]), np.concatenate([p.targets for p in parts]))
    for name in ("image", "packets", "packet_attention", "byte_attention", "feature_attention"):
        if getattr(parts[0], name) is not None:
            setattr(merged, name, np.concatenate([getattr(p, name) for p in parts]))
    merged.image_method, merged.packets_method, merged.grad_cam_grid = parts[0].image_method, parts[0].packets_method, parts[0].grad_cam_grid
    return merged


def _provenance(ctx: _Context) -> dict[str, Any]:
    return {"run": str(ctx.run), "model": ctx.clf.bundle.name, "dataset": str(ctx.ds.path),
            "layer": ctx.ds.config.get("layer"), "mask": ctx.ds.config.get("mask"),
            "split": (ctx.clf.bundle.config.get("split") or {}).get("kind")}


def explain_session(run: str | os.PathLike, session: int, dataset: str | os.PathLike | None = None,
                    cfg: ExplainConfig | None = None) -> dict[str, Any]:
    """Explain one dataset row (its `id`): maps, the fields they fall on, and the prediction."""
    cfg = cfg or ExplainConfig()
    ctx = _open(run, dataset)
    if not 0 <= session < len(ctx.ds):
        raise DatasetError(f"{ctx.ds.path}: no session {session} (ids are 0..{len(ctx.ds) - 1})")
    target = None
    if cfg.target is not None:
        if cfg.target not in ctx.label_index:
            raise ConfigError(f"--target {cfg.target!r} is not a class of {ctx.run}; choose from {', '.join(ctx.clf.labels)}")
        target = np.array([ctx.label_index[cfg.target]])
    maps = _maps(ctx, np.array([session]), target, 1, cfg.cam)
    names, source = _fields_for(ctx, [session], cfg)
    fields = names[session]
    weight, count, nonzero = field_weights(maps, 0, fields, ctx.ds.tensor("image")[session], ctx.ds.tensor("packets")[session])
    total = sum(count.values())
    live = {k: nonzero[k] / count[k] for k in count}
    masked = mask_fields(ctx.ds.config.get("mask"))
    labels = ctx.clf.labels
    label = ctx.ds.labels[session]
    out = {
        **_provenance(ctx),
        "session": int(session),
        "label": None if label is None else str(label),
        "predicted": labels[int(maps.probabilities[0].argmax())],
        "target": labels[int(maps.targets[0])],
        "probabilities": {labels[j]: round(float(p), 6) for j, p in enumerate(maps.probabilities[0])},
        "methods": {"image": maps.image_method, "packets": maps.packets_method},
        "fields_from": source,
        "empty_map": _empty(maps, 0),
        "empty_reason": blank_reason(maps.image_method or maps.packets_method, labels[int(maps.targets[0])])
                        if _empty(maps, 0) else None,
        "groups": field_groups(weight),
        "top_fields": top_fields(weight, {k: v / total for k, v in count.items()}, live, cfg.top, masked),
        "masked_fields": masked_fields(weight, live, masked),
        "image": {"bytes": ctx.ds.tensor("image")[session].tolist(), "fields": fields.image,
                  "packet": fields.image_packet.tolist(),
                  "weights": None if maps.image is None else np.round(maps.image[0], 6).tolist(),
                  "grad_cam_grid": list(maps.grad_cam_grid) if maps.grad_cam_grid else None},
        "packets": {"bytes": ctx.ds.tensor("packets")[session].tolist(), "fields": fields.packets,
                    "weights": None if maps.packets is None else np.round(maps.packets[0], 6).tolist(),
                    "packet_attention": None if maps.packet_attention is None else np.round(maps.packet_attention[0], 6).tolist(),
                    "byte_attention": None if maps.byte_attention is None else np.round(maps.byte_attention[0], 6).tolist()},
        "feature_attention": None if maps.feature_attention is None else np.round(maps.feature_attention[0], 6).tolist(),
    }
    return out


def _empty(maps: Maps, i: int) -> bool:
    """Whether session i got no weight at all (Grad-CAM is all zero when no region raises the score)."""
    return all(m is None or not m[i].any() for m in (maps.image, maps.packets))


def summary_rows(ctx: _Context, cfg: ExplainConfig) -> dict[str, np.ndarray]:
    """Up to `per_class` rows per class of the run, from its test split (or all rows)."""
    labels = ctx.ds.labels
    candidates = np.arange(len(ctx.ds))
    if cfg.split == "test":
        if ctx.assignment is None:
            raise BundleError(f"{ctx.run}: no split.npy to find the test sessions; use --split all")
        candidates = np.flatnonzero(ctx.assignment == 2)
    rng = np.random.default_rng(cfg.seed)
    out = {}
    for label in ctx.clf.labels:
        rows = candidates[np.array([str(x) == label for x in labels[candidates]], dtype=bool)] if len(candidates) else candidates
        if len(rows) > cfg.per_class:
            rows = np.sort(rng.choice(rows, cfg.per_class, replace=False))
        if len(rows):
            out[label] = rows
    return out


def explain_per_class(run: str | os.PathLike, dataset: str | os.PathLike | None = None, cfg: ExplainConfig | None = None,
                      log: Callable[[str], None] = lambda message: None, progress: bool | None = False) -> dict[str, Any]:
    """Per class: the fields that carry the weight of its own class score, over up to
    `cfg.per_class` sessions, with the share on host- or capture-identifying fields.
    `progress`: a bar of sessions explained on stderr (None: when stderr is a terminal)."""
    from trafficlens.progress import session_bar

    cfg = cfg or ExplainConfig()
    ctx = _open(run, dataset)
    chosen = summary_rows(ctx, cfg)
    if not chosen:
        raise DatasetError(f"{ctx.ds.path}: no labelled sessions of {ctx.run}'s classes in the {cfg.split} rows")
    all_rows = sorted(int(r) for rows in chosen.values() for r in rows)
    log(f"explaining {len(all_rows)} sessions of {len(chosen)} classes; rebuilding field names from the captures")
    names, source = _fields_for(ctx, all_rows, cfg)
    image, packets = ctx.ds.tensor("image"), ctx.ds.tensor("packets")
    masked = mask_fields(ctx.ds.config.get("mask"))
    classes: dict[str, Any] = {}
    bar = session_bar(total=len(all_rows), desc="explain", enabled=progress)
    for label, rows in chosen.items():
        targets = np.full(len(rows), ctx.label_index[label]) if cfg.target is None else np.full(len(rows), ctx.label_index[cfg.target])
        maps = _maps(ctx, rows, targets, cfg.batch_size, cfg.cam)
        weight: dict[str, float] = {}
        share: dict[str, float] = {}
        positions: dict[str, int] = {}
        nonzero: dict[str, int] = {}
        for i, r in enumerate(rows):
            w, c, z = field_weights(maps, i, names[int(r)], image[r], packets[r])
            total = sum(c.values())
            for key, value in w.items():
                weight[key] = weight.get(key, 0.0) + value / len(rows)
            for key, value in c.items():
                share[key] = share.get(key, 0.0) + value / total / len(rows)
                positions[key] = positions.get(key, 0) + value
                nonzero[key] = nonzero.get(key, 0) + z[key]
        live = {k: nonzero[k] / positions[k] for k in positions}
        entry = {
            "sessions": int(len(rows)),
            "accuracy": float(np.mean(maps.probabilities.argmax(axis=1) == ctx.label_index[label])),
            "empty_maps": int(sum(1 for i in range(len(rows)) if _empty(maps, i))),
            "top_fields": top_fields(weight, share, live, cfg.top, masked),
            "masked_fields": masked_fields(weight, live, masked),
            "identifying_weight": round(sum(v for k, v in weight.items() if is_shortcut(k, live.get(k, 0.0))), 6),
            "groups": field_groups(weight),
            "padding_weight": round(weight.get("(padding)", 0.0), 6),
        }
        if maps.image is not None:
            entry["mean_image"] = np.round(image[rows].astype(np.float64).mean(axis=0), 2).tolist()
            entry["mean_image_weights"] = np.round(maps.image.mean(axis=0), 6).tolist()
        if maps.packet_attention is not None:
            entry["packet_attention"] = np.round(maps.packet_attention.mean(axis=0), 6).tolist()
        if maps.feature_attention is not None:
            alpha = maps.feature_attention.mean(axis=0)
            entry["feature_attention"] = np.round(alpha, 6).tolist()
            entry["feature_attention_first_half"] = round(float(alpha[: len(alpha) // 2].sum()), 6)  # Model A: CNN share
        classes[label] = entry
        bar.update(len(rows))
    bar.close()
    methods = {"image": maps.image_method, "packets": maps.packets_method}
    return {**_provenance(ctx), "rows": cfg.split, "per_class": cfg.per_class,
            "target": cfg.target or "true class", "methods": methods, "fields_from": source, "classes": classes}


# -- figures and pages ----------------------------------------------------------------------------
def _grid(values: np.ndarray) -> np.ndarray:
    """A byte vector as a 2-D picture: square when K is, else rows of 32."""
    k = len(values)
    side = int(round(k ** 0.5))
    if side * side == k:
        return values.reshape(side, side)
    width = 32
    padded = np.zeros(-(-k // width) * width)
    padded[:k] = values
    return padded.reshape(-1, width)


def _overlay(ax, image: np.ndarray, weights: np.ndarray | None, title: str) -> None:
    ax.imshow(_grid(np.asarray(image, dtype=float)), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if weights is not None and np.max(weights) > 0:
        w = _grid(np.asarray(weights, dtype=float))
        ax.imshow(w / w.max(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(ax, rows: list[dict[str, Any]], title: str) -> None:
    names = [r["field"] + (" *" if r["identifying"] else "") for r in rows][::-1]
    ax.barh(range(len(rows)), [r["weight"] for r in rows][::-1], color=["#c0392b" if r["identifying"] else "#2c7fb8" for r in rows][::-1])
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.set_xlabel("share of the explanation's weight")
    ax.set_title(title, fontsize=9)


def _wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _blank(ax, reason: str) -> None:
    """An empty chart that says why it is empty."""
    ax.axis("off")
    ax.text(0.5, 0.5, _wrap(reason, 80), ha="center", va="center", fontsize=8, transform=ax.transAxes)


def session_figures(exp: dict[str, Any]) -> list[tuple[str, str]]:
    plt = pyplot()


    # One figure per map the model has, blank or not, and always the fields chart: how many
    # figures a page holds depends on the model, never on what one training happened to learn.
    figures = []
    img = exp["image"]
    blank = exp.get("empty_reason")
    if img["weights"] is not None:
        fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3.6))
        _overlay(a, img["bytes"], None, "session image (grey: byte value)")
        _overlay(b, img["bytes"], img["weights"], f"{exp['methods']['image']} for {exp['target']}"
                 + (" (blank)" if blank else ""))
        if blank:
            fig.text(0.5, -0.02, _wrap(blank), ha="center", va="top", fontsize=7)
        figures.append((f"Image: {exp['methods']['image']} over the grey image", figure_png(fig)))
    pk = exp["packets"]
    if pk["weights"] is not None:
        w = np.array(pk["weights"])
        fig, axes = plt.subplots(1, 2 if pk["packet_attention"] else 1, figsize=(9, 2.8), squeeze=False,
                                 gridspec_kw={"width_ratios": [4, 1]} if pk["packet_attention"] else None)
        axes[0][0].imshow(np.array(pk["bytes"], dtype=float), cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="nearest")
        if w.max() > 0:
            axes[0][0].imshow(w / w.max(), cmap="jet", alpha=0.45, aspect="auto", interpolation="nearest")
        axes[0][0].set_xlabel("byte in packet")
        axes[0][0].set_ylabel("packet")
        axes[0][0].set_title(f"{exp['methods']['packets']} per byte", fontsize=8)
        if pk["packet_attention"]:
            att = pk["packet_attention"]
            axes[0][1].barh(range(len(att)), att, color="#2c7fb8")
            axes[0][1].invert_yaxis()
            axes[0][1].set_title("packet attention", fontsize=8)
        figures.append(("Packets: byte-level and packet-level weights", figure_png(fig)))
    fig, ax = plt.subplots(figsize=(6, 0.25 * max(len(exp["top_fields"]), 4) + 1))
    if exp["top_fields"]:
        _bars(ax, exp["top_fields"], "fields carrying the weight (* identifies a host or capture)")
    else:
        _blank(ax, blank or "no unmasked field carries weight")
    figures.append(("Protocol fields", figure_png(fig)))
    if exp["feature_attention"]:
        fig, ax = plt.subplots(figsize=(8, 2.5))
        _alpha_plot(ax, {exp["target"]: exp["feature_attention"]})
        figures.append(("Model A feature attention", figure_png(fig)))
    return figures


def _alpha_plot(ax, alphas: dict[str, list[float]]) -> None:
    for label, alpha in alphas.items():
        ax.plot(alpha, lw=0.8, label=label)
    half = len(next(iter(alphas.values()))) // 2
    ax.axvline(half - 0.5, color="#888", lw=0.6, ls="--")
    ax.set_xlabel(f"feature (0-{half - 1}: spatial, CNN; {half}-{2 * half - 1}: sequential, GRU)")
    ax.set_ylabel("alpha")
    if len(alphas) <= 12:
        ax.legend(fontsize=6, ncols=2)


def per_class_figures(summary: dict[str, Any]) -> list[tuple[str, str]]:
    plt = pyplot()


    classes = summary["classes"]
    labels = list(classes)
    figures = []
    with_images = [c for c in labels if "mean_image_weights" in classes[c]]
    if with_images:
        cols = min(6, len(with_images))
        rows = -(-len(with_images) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, label in zip(axes.ravel(), with_images):
            blank = not any(classes[label]["mean_image_weights"])
            _overlay(ax, classes[label]["mean_image"], classes[label]["mean_image_weights"],
                     label + (" (blank map)" if blank else ""))
            ax.axis("on")
        figures.append((f"Mean {summary['methods']['image']} per class over the mean image (Chen 2023 Figure 4)", figure_png(fig)))
    groups = sorted({g for label in labels for g in classes[label]["groups"]})
    if groups:
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(labels) + 2), 3.4))
        bottom = np.zeros(len(labels))
        for g in groups:
            values = np.array([classes[label]["groups"].get(g, 0.0) for label in labels])
            ax.bar(range(len(labels)), values, bottom=bottom, label=g)
            bottom += values
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_ylabel("share of weight")
        ax.legend(fontsize=7, ncols=len(groups), loc="lower center", bbox_to_anchor=(0.5, 1.0))
        figures.append(("Weight per protocol layer and class (padding: where the session's bytes end)", figure_png(fig)))
    fields: list[str] = []
    for label in labels:
        for row in classes[label]["top_fields"][:6]:
            if row["field"] not in fields:
                fields.append(row["field"])
    if not fields:  # every class's map blank: the chart is still there, saying so
        fig, ax = plt.subplots(figsize=(6, 2.5))
        _blank(ax, blank_reason(summary["methods"].get("image") or summary["methods"].get("packets"), "any class")
               + f" ({sum(c['empty_maps'] for c in classes.values())} of {sum(c['sessions'] for c in classes.values())} maps)")
        figures.append(("Fields carrying the weight, per class (the shortcut detector)", figure_png(fig)))
    else:
        lookup = {label: {r["field"]: r["weight"] for r in classes[label]["top_fields"]} for label in labels}
        matrix = np.array([[lookup[label].get(f, np.nan) for f in fields] for label in labels])
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(fields) + 2), max(3, 0.3 * len(labels) + 1.5)))
        im = ax.imshow(np.nan_to_num(matrix), cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(fields)), fields, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        fig.colorbar(im, ax=ax, label="share of weight (blank: not in the class's top fields)")
        figures.append(("Fields carrying the weight, per class (the shortcut detector)", figure_png(fig)))
    alphas = {label: classes[label]["feature_attention"] for label in labels if "feature_attention" in classes[label]}
    if len(alphas) > 6:  # too many lines to read: one row per class
        matrix = np.array(list(alphas.values()))
        fig, ax = plt.subplots(figsize=(9, max(2.5, 0.25 * len(alphas) + 1)))
        im = ax.imshow(matrix, cmap="magma", aspect="auto", interpolation="nearest")
        ax.axvline(matrix.shape[1] / 2 - 0.5, color="w", lw=0.8, ls="--")
        ax.set_yticks(range(len(alphas)), list(alphas), fontsize=7)
        ax.set_xlabel(f"feature (0-{matrix.shape[1] // 2 - 1}: spatial, CNN; then sequential, GRU)")
        fig.colorbar(im, ax=ax, label="mean alpha")
        figures.append(("Model A feature-attention distribution per class (Chen 2023 Figure 11)", figure_png(fig)))
    elif alphas:
        fig, ax = plt.subplots(figsize=(9, 3))
        _alpha_plot(ax, alphas)
        figures.append(("Model A feature-attention distribution per class (Chen 2023 Figure 11)", figure_png(fig)))
    attention = {label: classes[label]["packet_attention"] for label in labels if "packet_attention" in classes[label]}
    if attention:
        matrix = np.array(list(attention.values()))
        fig, ax = plt.subplots(figsize=(4, max(2.5, 0.3 * len(attention) + 1)))
        im = ax.imshow(matrix, cmap="Blues", aspect="auto", vmin=0)
        ax.set_yticks(range(len(attention)), list(attention), fontsize=7)
        ax.set_xlabel("packet")
        fig.colorbar(im, ax=ax, label="mean packet attention")
        figures.append(("Packet-level attention per class (Chen 2023 Table 4)", figure_png(fig)))
    return figures


def _field_table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        lift = "" if r["lift"] is None else f"{r['lift']:.2f}"
        cls = " class=id" if r["identifying"] else ""
        cells.append(f"<tr><td{cls}>{html.escape(r['field'])}</td><td>{r['weight']:.4f}</td><td>{r['positions']:.4f}</td><td>{lift}</td></tr>")
    body = "".join(cells)
    return f"<table><tr><th>field</th><th>weight</th><th>share of positions</th><th>lift</th></tr>{body}</table>"


def _masked_note(d: dict[str, Any]) -> str:
    """The masked fields (never ranked) and a blank map's reason, as HTML."""
    out = ""
    if d.get("empty_reason"):
        out += f"<p><b>Blank map:</b> {html.escape(d['empty_reason'])}.</p>"
    if d.get("masked_fields"):
        listed = ", ".join(f"{r['field']} {r['weight']:.4f}" for r in d["masked_fields"])
        out += (f"<p class=masked>Zeroed by the {html.escape(str(d.get('mask', '')))} mask, so not ranked (weight that "
                f"spilled onto them): {html.escape(listed)}</p>")
    return out


def _intro(d: dict[str, Any]) -> str:
    keys = ("run", "model", "dataset", "layer", "mask", "split", "fields_from")
    provenance = ", ".join(f"{k}={html.escape(str(d.get(k)))}" for k in keys)
    return (f"<p>Produced by: {provenance}. Methods: {html.escape(json.dumps(d['methods']))}.</p>"
            "<p>Weight: share of the explanation's byte weight on the field. Lift: weight divided by the share of "
            "positions the field fills (1 = no more than its size). <span class=id>Red</span>: the field names a host, "
            "a capture or a moment rather than an application and holds values (is not masked), so weight there is a shortcut.</p>")


def write_session(out: str | os.PathLike, exp: dict[str, Any]) -> tuple[Path, Path]:
    """`session-ID.json` and `session-ID.html` in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"session-{exp['session']}"
    (out / f"{stem}.json").write_text(json.dumps(exp) + "\n")
    probs = sorted(exp["probabilities"].items(), key=lambda kv: -kv[1])[:5]
    head = (f"<p><b>label {html.escape(str(exp['label']))} · predicted {html.escape(exp['predicted'])} · explained class "
            f"{html.escape(exp['target'])}</b> (top: {html.escape(', '.join(f'{k} {v:.3f}' for k, v in probs))})</p>")
    html_page = page(f"{exp['model']}: session {exp['session']} of {Path(exp['dataset']).name}", head + _intro(exp),
                 _field_table(exp["top_fields"]) + _masked_note(exp), session_figures(exp))
    (out / f"{stem}.html").write_text(html_page)
    return out / f"{stem}.json", out / f"{stem}.html"


def write_per_class(out: str | os.PathLike, summary: dict[str, Any]) -> tuple[Path, Path]:
    """`per-class.json` and `per-class.html` in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per-class.json").write_text(json.dumps(summary) + "\n")
    tables = "".join(
        f"<h3>{html.escape(label)}</h3><p>{c['sessions']} sessions, accuracy {c['accuracy']:.3f}; weight on identifying "
        f"fields {c['identifying_weight']:.3f}; by layer: {html.escape(', '.join(f'{k} {v:.3f}' for k, v in c['groups'].items()))}</p>"
        f"{_field_table(c['top_fields'])}{_masked_note({**c, 'mask': summary.get('mask')})}"
        for label, c in summary["classes"].items())
    html_page = page(f"{summary['model']}: fields per class on {Path(summary['dataset']).name}",
                 f"<p>Explained class: {html.escape(summary['target'])}; up to {summary['per_class']} sessions per class "
                 f"from the {summary['rows']} rows.</p>" + _intro(summary), tables, per_class_figures(summary))
    (out / "per-class.html").write_text(html_page)
    return out / "per-class.json", out / "per-class.html"

