"""Every registered model: builds from the registry, runs forward and backward, exposes its parts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trafficlens.errors import ConfigError
from trafficlens.models import count_parameters, create_model, list_models, model_info
from trafficlens.models.ensemble import member_loss
from trafficlens.models.layers import DigitCaps, attention_maps, squash
from trafficlens.models.losses import FocalLoss, inverse_frequency, make_loss

SHAPES = {"image": (400,), "packets": (6, 32), "sequence": (8, 2), "stats": (3,)}


def batch(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n, *SHAPES[t]), generator=g, dtype=torch.uint8) for t in model.inputs]


def test_registry_lists_every_model_of_the_issue():
    assert set(list_models("deep")) == {
        "ge-inception-capsnet", "ge-elmo-lstm-attention", "ge-cnn-lstm", "chen-cnn", "chen-gru", "chen-han",
        "chen-model-a", "chen-model-b", "wang-1dcnn", "wang-2dcnn", "tl-fusion",
    }


@pytest.mark.parametrize("name", list_models("deep"))
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, input_shapes=SHAPES)
    assert tuple(model.inputs) == model_info(name).inputs
    print(f"{name}: {count_parameters(model):,} parameters ({count_parameters(model, trainable_only=True):,} trainable)")
    model.train()
    xs = batch(model)
    # training: (B, C), or (members, B, C) from an ensemble, each member with its own loss
    loss, logits = member_loss(torch.nn.CrossEntropyLoss(), model(*xs), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 5)
    assert torch.isfinite(logits).all()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    # the timm split: features -> head; pre-logits width is num_features
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(*xs)
        assert torch.allclose(model.forward_head(feats), model(*xs), atol=1e-5)
        assert model.forward_head(feats, pre_logits=True).shape == (4, model.num_features)


@pytest.mark.parametrize("side", [12, 28, 35])
@pytest.mark.parametrize("name", [n for n in list_models("deep") if "image" in model_info(n).inputs])
def test_image_models_take_any_square_side(name, side):
    shapes = {**SHAPES, "image": (side * side,)}
    model = create_model(name, num_classes=3, input_shapes=shapes).eval()
    xs = [torch.randint(0, 256, (2, *shapes[t]), dtype=torch.uint8) for t in model.inputs]
    with torch.no_grad():
        assert model(*xs).shape == (2, 3)


@pytest.mark.parametrize("name", ["ge-inception-capsnet", "ge-cnn-lstm"])
def test_ge_models_read_the_papers_400_bytes_of_any_image(name):
    shapes = {**SHAPES, "image": (784,)}
    model = create_model(name, num_classes=3, input_shapes=shapes).eval()
    assert model.cfg.image_side == 20  # Ge 2021's 20x20, not the dataset's 28x28
    xs = [torch.randint(0, 256, (2, *shapes[t]), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
          for t in model.inputs]
    with torch.no_grad():
        before = model.forward_features(*xs)
        xs[0][:, 400:] = 255 - xs[0][:, 400:]  # bytes past the 400th: not read
        assert torch.equal(model.forward_features(*xs), before)
        xs[0][:, 380:400] = 255 - xs[0][:, 380:400]  # the picture's last row is
        assert not torch.equal(model.forward_features(*xs), before)
    assert create_model(name, num_classes=3, input_shapes=shapes, image_side=28).cfg.image_side == 28  # asked for
    assert create_model(name, num_classes=3, input_shapes={**SHAPES, "image": (256,)}).cfg.image_side == 16  # K < 400
    with pytest.raises(ConfigError, match="image_side=29 needs 841 image bytes; the dataset has 784"):
        create_model(name, num_classes=3, input_shapes=shapes, image_side=29)
    assert create_model("chen-cnn", num_classes=3, input_shapes=shapes).cfg.image_side == 28  # other models: all of it


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown setting.*bogus"):
        create_model("chen-cnn", num_classes=3, bogus=1)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(ConfigError, match="square image"):
        create_model("chen-cnn", num_classes=3, input_shapes={"image": (500,)})
    with pytest.raises(ConfigError, match="max_tokens must be int"):
        create_model("chen-gru", num_classes=3, max_tokens="many")
    # None means "use the model's default" (command-line options that were not given)
    assert create_model("chen-gru", num_classes=3, max_tokens=None).cfg.max_tokens == 128
    assert create_model("chen-cnn", num_classes=3, channels=[8, 8, 8, 8]).cfg.channels == (8, 8, 8, 8)  # JSON lists


def test_attention_and_routing_weights_are_retrievable():
    han = create_model("chen-han", num_classes=3, input_shapes=SHAPES).eval()
    packets = torch.randint(1, 256, (2, 6, 32), dtype=torch.uint8)
    packets[1, 3:] = 0  # padding packets get no attention
    han(packets)
    maps = attention_maps(han)
    assert maps["byte_attention"].shape == (2, 6, 32) and maps["packet_attention"].shape == (2, 6)
    assert torch.allclose(maps["packet_attention"].sum(-1), torch.ones(2))
    assert float(maps["packet_attention"][1, 3:].sum()) < 1e-3
    caps = create_model("ge-inception-capsnet", num_classes=3, input_shapes=SHAPES).eval()
    caps(*batch(caps, 2))
    routing = attention_maps(caps)["branch.digit"]
    assert routing.shape == (2, 512, 10) and torch.allclose(routing.sum(-1), torch.ones(2, 512))
    fusion = create_model("chen-model-a", num_classes=3, input_shapes=SHAPES).eval()
    fusion(*batch(fusion, 2))
    alpha = attention_maps(fusion)["weighting"]
    assert alpha.shape == (2, fusion.num_features) and torch.allclose(alpha.sum(-1), torch.ones(2))
    lstm = create_model("ge-elmo-lstm-attention", num_classes=3, input_shapes=SHAPES).eval()
    lstm(*batch(lstm, 2))
    assert attention_maps(lstm)["branch.attention"].shape == (2, 6, 6)


def test_vectorised_routing_matches_the_loop_of_the_paper():
    torch.manual_seed(0)
    layer = DigitCaps(in_caps=7, in_dim=4, out_caps=3, out_dim=5, iterations=3)
    u = squash(torch.randn(2, 7, 4))
    v = layer(u)
    for b in range(2):  # Sabour et al. procedure 1, one capsule pair at a time
        u_hat = [[layer.W[i, j] @ u[b, i] for j in range(3)] for i in range(7)]
        logits = torch.zeros(7, 3)
        for r in range(3):
            c = logits.softmax(dim=1)
            out = [squash(sum(c[i, j] * u_hat[i][j] for i in range(7))) for j in range(3)]
            for i in range(7):
                for j in range(3):
                    logits[i, j] = logits[i, j] + u_hat[i][j] @ out[j]
        assert torch.allclose(torch.stack(out), v[b], atol=1e-5)


def test_model_a_branches_are_frozen():
    model = create_model("chen-model-a", num_classes=3, input_shapes=SHAPES).train()
    assert not model.cnn.training and not model.gru.training
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"weighting", "head"}


# -- losses: values computed here by hand, with math, not torch ---------------------------------------
LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0]]
TARGET = [0, 2, 1]
COUNTS = [6, 3, 1]  # training sessions per class: alpha = 10 / (3 n_c)


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_inverse_frequency_weights_are_n_over_c_n_c():
    alpha = inverse_frequency(np.array([6, 3, 1, 0]))
    assert alpha.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3, 0.0])  # 3 classes present, 10 sessions
    assert inverse_frequency(np.array([5, 5])).tolist() == [1.0, 1.0]


def test_focal_loss_is_the_class_weighted_formula_of_ge_2021():
    """L = mean_i -alpha_y (1 - q_y)^gamma log q_y, with alpha from the class counts and gamma 2."""
    alpha = [10 / 18, 10 / 9, 10 / 3]
    q = [_softmax(row)[y] for row, y in zip(LOGITS, TARGET)]
    by_hand = sum(-alpha[y] * (1 - qy) ** 2 * math.log(qy) for qy, y in zip(q, TARGET)) / len(TARGET)
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGET)
    assert FocalLoss(inverse_frequency(np.array(COUNTS)))(logits, target).item() == pytest.approx(by_hand, rel=1e-6)  # gamma 2
    assert make_loss("focal", np.array(COUNTS))(logits, target).item() == pytest.approx(by_hand, rel=1e-6)
    gamma_1 = sum(-alpha[y] * (1 - qy) * math.log(qy) for qy, y in zip(q, TARGET)) / len(TARGET)
    assert make_loss("focal", np.array(COUNTS), gamma=1.0)(logits, target).item() == pytest.approx(gamma_1, rel=1e-6)
    unweighted = sum(-(1 - qy) ** 2 * math.log(qy) for qy in q) / len(TARGET)
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(unweighted, rel=1e-6)
    # gamma 0 is weighted cross-entropy averaged per sample; easy examples weigh almost nothing
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target), atol=1e-6)
    easy = torch.tensor([[10.0, 0, 0]])
    assert FocalLoss(gamma=2.0)(easy, torch.tensor([0])) < F.cross_entropy(easy, torch.tensor([0])) / 100


def test_focal_loss_gradient_raises_the_true_class():
    """Descending the loss raises the true class's logit and lowers the others', harder for the rarer class."""
    logits = torch.tensor(LOGITS, requires_grad=True)
    make_loss("focal", np.array(COUNTS))(logits, torch.tensor(TARGET)).backward()
    grad = logits.grad
    for i, y in enumerate(TARGET):
        assert grad[i, y] < 0, i
        assert all(grad[i, j] > 0 for j in range(3) if j != y), i
    # the same logits for a frequent class (0) and the rarest (2): the rare one pulls harder
    same = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    make_loss("focal", np.array(COUNTS))(same, torch.tensor([0, 2])).backward()
    assert same.grad[1, 2] / same.grad[0, 0] == pytest.approx(6.0)  # alpha_2 / alpha_0 = 6 / 1


def test_weighted_cross_entropy_and_plain_cross_entropy_by_hand():
    alpha = [10 / 18, 10 / 9, 10 / 3]
    nll = [-math.log(_softmax(row)[y]) for row, y in zip(LOGITS, TARGET)]
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGET)
    weighted = sum(alpha[y] * v for v, y in zip(nll, TARGET)) / sum(alpha[y] for y in TARGET)  # PyTorch's mean
    assert make_loss("weighted-ce", np.array(COUNTS))(logits, target).item() == pytest.approx(weighted, rel=1e-6)
    assert make_loss("ce", np.array(COUNTS))(logits, target).item() == pytest.approx(sum(nll) / 3, rel=1e-6)
    with pytest.raises(ConfigError, match="loss must be one of ce, weighted-ce, focal, got 'hinge'"):
        make_loss("hinge", np.ones(3))


@pytest.mark.parametrize("name", list_models("deep"))
def test_batch_norm_folding_keeps_every_model_s_outputs(name):
    import copy

    from trafficlens.inference.runtime import fold_batch_norm, folded_for_inference

    model = create_model(name, num_classes=5, input_shapes=SHAPES)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # trained-looking statistics, so folding has something to do
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.eval()
    xs = batch(model, n=8)
    folded = copy.deepcopy(model)
    count = fold_batch_norm(folded)
    with torch.inference_mode():
        expect, got = model(*xs), folded(*xs)
    if count:
        assert torch.allclose(expect, got, atol=1e-4, rtol=1e-4)
    chosen = folded_for_inference(model, xs)
    assert (chosen is model) == (count == 0) and not model.training
    if name == "chen-cnn":
        assert count == 6  # four conv + BN, two linear + BN


# ONNX Runtime serves CPU inference where the export is exact: every registered model. (Ge's
# capsule stems resize their map to 12x12 with matrix products: adaptive pooling that does not
# divide evenly, 16 -> 12 or 20 -> 12, has no ONNX form.)


@pytest.mark.parametrize("name", list_models("deep"))
def test_onnx_runtime_gives_the_models_probabilities(name):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from trafficlens.inference.runtime import onnx_for_inference, probe_inputs
    from trafficlens.training.metrics import softmax

    shapes = {**SHAPES, "image": (784,)}
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, input_shapes=shapes).eval()
    compiled = onnx_for_inference(model, probe_inputs(model.inputs, shapes, n=16), threads=1)
    assert compiled is not None
    fresh = probe_inputs(model.inputs, shapes, n=7, seed=1)  # other inputs, another batch size
    with torch.no_grad():
        expect = torch.softmax(model(*fresh), dim=1).numpy()
    np.testing.assert_allclose(softmax(compiled(*[x.numpy() for x in fresh])), expect, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n, out", [(16, 12), (20, 12), (24, 12), (12, 12), (7, 3)])
def test_average_pool_to_is_adaptive_average_pooling(n, out):
    from trafficlens.models.layers import AveragePoolTo

    x = torch.randn(3, 5, n, n, generator=torch.Generator().manual_seed(n))
    assert torch.allclose(AveragePoolTo(n, out)(x), F.adaptive_avg_pool2d(x, out), atol=1e-6)
    assert "matrix" not in AveragePoolTo(n, out).state_dict()  # checkpoints of older runs still load


def test_capsnet_at_28x28_exports_too():
    pytest.importorskip("onnxruntime")
    from trafficlens.inference.runtime import onnx_for_inference, probe_inputs
    from trafficlens.training.metrics import softmax

    shapes = {**SHAPES, "image": (784,)}
    torch.manual_seed(0)
    model = create_model("ge-inception-capsnet", num_classes=5, input_shapes=shapes, image_side=28).eval()
    compiled = onnx_for_inference(model, probe_inputs(model.inputs, shapes, n=16), threads=1)
    assert compiled is not None  # its 20x20 map pooled to 12x12: adaptive pooling had no ONNX form
    fresh = probe_inputs(model.inputs, shapes, n=5, seed=2)
    with torch.no_grad():
        expect = torch.softmax(model(*fresh), dim=1).numpy()
    np.testing.assert_allclose(softmax(compiled(*[x.numpy() for x in fresh])), expect, atol=1e-4, rtol=0)
