"""tl-fusion (issue 15): every view reaches the head, it learns from each one, and a trained run
goes through the bundle, ONNX Runtime, predict and explain like the papers' models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trafficlens.datasets import Dataset, DatasetWriter
from trafficlens.errors import ConfigError
from trafficlens.models import create_model
from trafficlens.training import TrainConfig, load_bundle, train_run

SHAPES = {"packets": (6, 32), "sequence": (8, 2), "stats": (3,)}
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample"


def inputs(n=5, seed=0, present=3):
    """Random bytes, sizes and gaps; packets past `present` are padding (zero)."""
    rng = np.random.default_rng(seed)
    packets = rng.integers(0, 256, (n, *SHAPES["packets"]), dtype=np.uint8)
    packets[:, present:] = 0
    sequence = np.zeros((n, *SHAPES["sequence"]), dtype=np.float32)
    sequence[:, :present, 0] = rng.choice([-1, 1], (n, present)) * rng.integers(40, 1500, (n, present))
    sequence[:, 1:present, 1] = rng.random((n, present - 1))
    stats = rng.random((n, *SHAPES["stats"]), dtype=np.float32) * 1000
    return [torch.from_numpy(x) for x in (packets, sequence, stats)]


def test_shapes_attention_over_present_packets_and_views_switched_off():
    torch.manual_seed(0)
    model = create_model("tl-fusion", num_classes=4, input_shapes=SHAPES, members=1).eval()
    assert model.inputs == ("packets", "sequence", "stats") and model.cfg.sequence_length == 8
    with torch.no_grad():
        logits = model(*inputs())
    assert logits.shape == (5, 4) and torch.isfinite(logits).all()
    attention = model.packet_attention.weights  # (B, L)
    assert attention.shape == (5, 8)
    assert torch.allclose(attention.sum(dim=1), torch.ones(5), atol=1e-5)
    assert attention[:, 3:].max() < 1e-3  # padding packets get no weight
    assert model.blocks[0].attention.weights.shape == (5, 4, 8, 8)
    assert model.forward_features(*inputs()).shape == (5, 2 * model.cfg.dim)  # packets + statistics

    # each switch removes its branch, and the output no longer depends on that view
    for view, flag, branch in ((0, "use_bytes", "byte_embed"), (1, "use_sizes", "size_proj"), (2, "use_stats", "stats_mlp")):
        ablated = create_model("tl-fusion", num_classes=4, input_shapes=SHAPES, members=1, **{flag: False}).eval()
        assert not hasattr(ablated, branch)
        changed = inputs()
        other = inputs(seed=1)
        changed[view] = other[view] if view != 1 else changed[1] * 3  # sizes: same padding, other values
        with torch.no_grad():
            assert torch.allclose(ablated(*inputs()), ablated(*changed), atol=1e-5), flag
            assert not torch.allclose(model(*inputs()), model(*changed), atol=1e-5), flag
    gru = create_model("tl-fusion", num_classes=4, input_shapes=SHAPES, encoder="gru", members=1).eval()
    assert gru(*inputs()).shape == (5, 4)


def test_timing_jitter_changes_training_passes_only_and_only_through_the_gaps():
    torch.manual_seed(0)
    model = create_model("tl-fusion", num_classes=4, input_shapes=SHAPES, jitter=0.5, dropout=0.0, members=1)
    plain = create_model("tl-fusion", num_classes=4, input_shapes=SHAPES, dropout=0.0, members=1)
    plain.load_state_dict(model.state_dict())
    x = inputs()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(*x), plain.eval()(*x))  # predicting: no noise
    model.train()
    with torch.no_grad():
        first, second = model(*x), model(*x)
        assert not torch.allclose(first, second)  # a new draw each pass
        no_gaps = [x[0], x[1].clone(), x[2]]
        no_gaps[1][..., 1] = 0  # nothing to jitter: sizes and bytes are left as they are
        assert torch.allclose(model(*no_gaps), model(*no_gaps))
    with pytest.raises(ConfigError, match="jitter must be in"):
        create_model("tl-fusion", num_classes=2, input_shapes=SHAPES, jitter=-0.1)


def test_bad_settings_name_the_fix():
    with pytest.raises(ConfigError, match="encoder must be one of transformer, gru"):
        create_model("tl-fusion", num_classes=2, input_shapes=SHAPES, encoder="lstm")
    with pytest.raises(ConfigError, match="at least one of"):
        create_model("tl-fusion", num_classes=2, input_shapes=SHAPES, use_bytes=False, use_sizes=False, use_stats=False)
    with pytest.raises(ConfigError, match="needs dataset tensor"):
        create_model("tl-fusion", num_classes=2, input_shapes={"packets": (6, 32)})


def views_dataset(path, per_class=60, seed=0):
    """Three classes that differ from a fourth, noise only (delta), in one view each: alpha by a
    byte block in packet 0, beta by the direction and size of its packets, gamma by its flow
    statistics. A model that ignores a view cannot tell that view's class from delta."""
    rng = np.random.default_rng(seed)
    classes = ("alpha", "beta", "gamma", "delta")
    with DatasetWriter(path, {"layer": "all", "mask": "strict", "image_bytes": 400}, image_bytes=400, packets=6,
                       packet_bytes=32, sequence_length=8, stats_names=["duration", "packets", "bytes"]) as w:
        for i in range(per_class):
            for c, label in enumerate(classes):
                packets = rng.integers(0, 8, (6, 32), dtype=np.uint8)
                packets[4:] = 0
                sequence = np.zeros((8, 2), dtype=np.float32)
                sequence[:4, 0] = rng.integers(60, 200, 4) * np.array([1, -1, 1, -1])
                sequence[1:4, 1] = rng.random(3) * 0.1
                stats = rng.random(3).astype(np.float32) * 10
                if label == "alpha":
                    packets[0, :8] = 200
                elif label == "beta":
                    sequence[:4, 0] = -rng.integers(1000, 1400, 4)
                elif label == "gamma":
                    stats[2] = 5000 + rng.random() * 1000
                meta = {"capture": f"{label}/cap{i % 5}.pcap", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
                        "src_port": 40000 + i, "dst_port": 443, "protocol": "TCP", "ts_start": float(i), "ts_end": i + 1.0,
                        "packets": 4, "bytes": 400, "payload_bytes": 200, "packets_fwd": 2, "packets_bwd": 2, "label": label}
                w.add(meta, rng.integers(0, 60, 400, dtype=np.uint8), packets, sequence, stats)
    return Dataset.open(path)


FAST = dict(batch_size=16, eval_batch_size=256, lr=3e-3, split="random", max_epochs=12, patience=6)
SMALL = dict(dim=32, hidden=64, layers=1, members=1)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    return views_dataset(tmp_path_factory.mktemp("views") / "ds")


def per_class_recall(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {label: row["recall"] for label, row in metrics["per_class"].items()}


def test_learns_every_view_and_an_ablation_loses_its_class(views, tmp_path):
    torch.manual_seed(0)
    s = train_run(views.path, tmp_path / "all", "tl-fusion", TrainConfig(**FAST), model_kwargs=SMALL, progress=False,
                  log=lambda m: None)
    assert s["test_accuracy"] >= 0.85, s  # chance is 1/4
    recall = per_class_recall(tmp_path / "all")
    assert min(recall.values()) >= 0.75, recall
    # without statistics gamma is noise like delta: the two are confused, and only they
    torch.manual_seed(0)
    train_run(views.path, tmp_path / "nostats", "tl-fusion", TrainConfig(**FAST), model_kwargs={**SMALL, "use_stats": False},
              progress=False, log=lambda m: None)
    ablated = per_class_recall(tmp_path / "nostats")
    assert ablated["gamma"] + ablated["delta"] <= recall["gamma"] + recall["delta"] - 0.4, (recall, ablated)
    assert ablated["alpha"] >= 0.75, ablated


def test_statistics_are_scaled_by_the_training_rows_and_bundles_of_either_scaling_load(views, tmp_path):
    """The default scaler is fitted once, by `fit`, on the training rows (signed log, then their
    mean and variance) and is never moved by training or by the batch-norm recalibration; a state
    dict of the old batch-norm scaling loads into it and predicts the same."""
    from trafficlens.models.tl_fusion import FittedNorm
    from trafficlens.training.bundle import read_split
    from trafficlens.training.trainer import recalibrate_batch_norm

    torch.manual_seed(0)
    train_run(views.path, tmp_path / "run", "tl-fusion", TrainConfig(**{**FAST, "max_epochs": 2}), model_kwargs=SMALL,
              progress=False, log=lambda m: None)
    model = load_bundle(tmp_path / "run").model
    norm = model.stats_norm
    assert isinstance(norm, FittedNorm)
    train_rows = np.flatnonzero(read_split(tmp_path / "run") == 0)
    x = np.asarray(views.tensor("stats")[train_rows], np.float64)
    x = np.sign(x) * np.log1p(np.abs(x))
    assert np.allclose(norm.running_mean.numpy(), x.mean(axis=0), rtol=1e-5)
    assert np.allclose(norm.running_var.numpy(), x.var(axis=0), rtol=1e-4)

    fitted = norm.running_mean.clone()
    model.train()
    tensors = {name: views.tensor(name) for name in model.inputs}
    recalibrate_batch_norm(model, tensors, np.arange(len(views.labels)), 4, 16, torch.device("cpu"), 0)
    model(*inputs(n=8, seed=2))
    assert torch.equal(norm.running_mean, fitted)
    assert torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).stats_norm is norm  # distributed: left as it is

    batch = create_model("tl-fusion", num_classes=4, input_shapes=SHAPES, stats_scaling="batch", members=1).eval()
    assert type(batch.stats_norm) is torch.nn.BatchNorm1d
    batch.stats_norm.running_mean.uniform_(0, 3)
    batch.stats_norm.running_var.uniform_(0.5, 2)
    default = create_model("tl-fusion", num_classes=4, input_shapes=SHAPES, members=1).eval()
    default.load_state_dict(batch.state_dict())
    with torch.no_grad():
        assert torch.allclose(default(*inputs()), batch(*inputs()), atol=1e-6)
    with pytest.raises(ConfigError, match="stats_scaling must be one of fitted, batch"):
        create_model("tl-fusion", num_classes=2, input_shapes=SHAPES, stats_scaling="minmax")


def test_members_answer_with_their_mean_probability_and_each_learns_from_its_own_loss():
    """The default is three networks from their own initialisations; predicting, their mean
    probability; training, each member's loss apart (a loss on their average would couple them)."""
    from trafficlens.models.ensemble import Members, member_loss

    torch.manual_seed(0)
    model = create_model("tl-fusion", num_classes=4, input_shapes=SHAPES)
    assert isinstance(model, Members) and len(model.members) == 3 and model.cfg.members == 3
    first, second = (m.head.weight for m in model.members[:2])
    assert not torch.equal(first, second)  # initialised apart
    x = inputs()
    with torch.no_grad():
        mean = torch.stack([m.eval()(*x).softmax(dim=1) for m in model.members]).mean(dim=0)
        assert torch.allclose(model.eval()(*x).softmax(dim=1), mean, atol=1e-6)
        assert model.train()(*x).shape == (3, 5, 4)
    logits = torch.randn(3, 5, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    loss, scored = member_loss(torch.nn.CrossEntropyLoss(), logits, y)
    own = [torch.nn.functional.cross_entropy(member, y) for member in logits]
    assert torch.allclose(loss, torch.stack(own).mean())
    (grad,) = torch.autograd.grad(loss, logits)
    # member 0's gradient is its own cross-entropy's, whatever the others say
    expected = (logits[0].softmax(dim=1) - torch.nn.functional.one_hot(y, 4)) / (3 * 5)
    assert torch.allclose(grad[0], expected, atol=1e-6)
    assert torch.allclose(scored.softmax(dim=1), logits.softmax(dim=2).mean(dim=0), atol=1e-6)
    with pytest.raises(ConfigError, match="members must be in"):
        create_model("tl-fusion", num_classes=2, input_shapes=SHAPES, members=0)


def test_a_run_saved_before_members_existed_loads_and_replays_as_one_network(views, tmp_path):
    from trafficlens.models.tl_fusion import TLFusion
    from trafficlens.training.run import replay

    torch.manual_seed(0)
    train_run(views.path, tmp_path / "run", "tl-fusion", TrainConfig(**{**FAST, "max_epochs": 1}), model_kwargs=SMALL,
              progress=False, log=lambda m: None)
    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    del config["model"]["config"]["members"]  # as every tl-fusion bundle before the ensemble was saved
    config_path.write_text(json.dumps(config))
    assert type(load_bundle(tmp_path / "run").model) is TLFusion
    assert replay(tmp_path / "run").model_kwargs["members"] == 1
    two = train_run(views.path, tmp_path / "two", "tl-fusion", TrainConfig(**{**FAST, "max_epochs": 1}),
                    model_kwargs={**SMALL, "members": 2}, progress=False, log=lambda m: None)
    model = load_bundle(tmp_path / "two").model
    assert len(model.members) == 2 and two["test_accuracy"] is not None
    norms = [m.stats_norm.running_mean for m in model.members]  # every member's scaler fitted
    assert torch.equal(norms[0], norms[1]) and norms[0].abs().sum() > 0


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """tl-fusion trained with no settings of its own on the bundled lab captures."""
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep

    tmp = tmp_path_factory.mktemp("fusion-sample")
    ds = prep([SAMPLE], tmp / "ds", PrepConfig(labels=f"csv:{SAMPLE / 'labels.csv'}", min_packets=5), workers=1)
    torch.manual_seed(0)
    summary = train_run(ds, tmp / "run", "tl-fusion", TrainConfig(batch_size=16, max_epochs=8), progress=False,
                        log=lambda m: None)
    return tmp / "run", Dataset.open(ds), summary


def test_bundle_round_trip_onnx_and_predict(sample_run, monkeypatch):
    pytest.importorskip("onnxruntime")
    from trafficlens.serving import Classifier
    from trafficlens.training.trainer import predict_logits

    run, ds, summary = sample_run
    classes = json.loads((run / "config.json").read_text())["labels"]
    assert summary["test_macro_f1"] > 1 / len(classes), summary  # above chance on held-out sessions
    bundle = load_bundle(run)
    assert bundle.name == "tl-fusion" and bundle.config["model"]["config"]["sequence_length"] == ds.tensor("sequence").shape[1]
    rows = np.arange(len(ds))
    tensors = {t: ds.tensor(t) for t in bundle.model.inputs}
    reloaded = predict_logits(bundle.model, tensors, rows)
    clf = Classifier.load(run)
    probs = clf.probabilities({t: ds.tensor(t)[:] for t in clf.inputs})
    assert clf.runtime == "onnxruntime"  # the export is exact, so predict serves it
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(reloaded), 1).numpy(), atol=1e-4)
    table = clf.predict_pcap(SAMPLE / "capture-2.pcapng", top_k=2)
    monkeypatch.setenv("TRAFFICLENS_INFERENCE", "torch")
    plain = Classifier.load(run).predict_pcap(SAMPLE / "capture-2.pcapng", top_k=2)
    assert len(table) > 0 and table.label.tolist() == plain.label.tolist()
    assert set(table.label.dropna()) <= set(classes)


def test_explanations_weigh_present_packets_and_their_bytes(sample_run):
    from trafficlens.explain.maps import explain_session, explain_tensors

    run, ds, _ = sample_run
    model = load_bundle(run).model
    tensors = {t: np.array(ds.tensor(t)[:6]) for t in model.inputs}
    tensors["packets"][:, 4:] = 0  # the last two packets absent from every view
    tensors["sequence"][:, 4:] = 0
    maps = explain_tensors(model, tensors)
    assert maps.packets_method == "gradient-x-input" and maps.packets.shape == (6, *ds.tensor("packets").shape[1:])
    assert np.allclose(maps.packets.sum(axis=(1, 2)), 1, atol=1e-6)
    assert maps.packets[:, 4:].max() < 1e-6  # masked out of attention and pooling: no gradient reaches them
    assert maps.packets[tensors["packets"] == 0].max() < 1e-6 and (tensors["packets"][:, :4] == 0).any()  # masked bytes weigh 0
    assert maps.packet_attention.shape == (6, ds.tensor("sequence").shape[1])
    assert np.allclose(maps.packet_attention.sum(axis=1), 1, atol=1e-5) and maps.packet_attention[:, 4:].max() < 1e-3
    members = [m.packet_attention.weights.numpy() for m in model.members]  # the default: three members
    assert np.allclose(maps.packet_attention, np.mean(members, axis=0)) and not np.allclose(members[0], members[1])
    exp = explain_session(run, 0)
    assert exp["methods"]["packets"] == "gradient-x-input" and exp["top_fields"]  # bytes mapped to protocol fields
    assert len(exp["packets"]["packet_attention"]) == ds.tensor("sequence").shape[1]
