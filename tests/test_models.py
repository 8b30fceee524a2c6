"""The model zoo contract, for every name in models.model_dict (CPU, offline).

* RepDistiller's 22 names: state_dict keys (and their order), shapes, parameter counts and the
  is_feat shapes of a 2x3x32x32 input equal tests/data/repdistiller_models.json (taken from
  RepDistiller's own code), so its public CIFAR-100 teacher checkpoints load without conversion.
* ImageNet ResNets: torchvision's own resnet18/34/50 state_dicts load strictly and give the same logits.
* Seed models: the seed notebooks' modules (transcribed below) load into them and give the same outputs.
* Every name: logits and feature shapes, is_feat/preact semantics, layer_names() + LayerRecorder
  (block outputs, forward order, once per forward, never overwritten later), checkpoint round trips,
  get_classifier(), input_shape, silent construction.
"""
from __future__ import annotations

import copy
import io
import json
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models import model_dict
from models.layers import LayerRecorder, Tap

REF = json.loads((Path(__file__).parent / "data" / "repdistiller_models.json").read_text())
REPD_NAMES = list(REF)
ALL_NAMES = list(model_dict)
IMAGENET_NAMES = ["ResNet18_imagenet", "ResNet34_imagenet", "ResNet50_imagenet"]
SEED_NAMES = ["cnn_mnist_teacher", "cnn_mnist_student", "VGGCifar9", "VGGCifar5"]
EXTRA_NAMES = ["ResNet18", "ResNet34", "MobileNetV2_1_0", "ShuffleV2_1_5"] + IMAGENET_NAMES + SEED_NAMES


def _shapes(batch, spec):
    """[(C, H, W) or (D,)] -> [[batch, ...]]"""
    return [[batch, *s] for s in spec]


# is_feat shapes of the names the JSON does not cover (batch 2 at 32x32 / 28x28, batch 1 at 224x224)
EXPECTED_FEATS = {
    "ResNet18": _shapes(2, [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512,)]),
    "ResNet34": _shapes(2, [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512,)]),
    "MobileNetV2_1_0": _shapes(2, [(32, 16, 16), (24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2), (1280,)]),
    "ShuffleV2_1_5": _shapes(2, [(24, 32, 32), (176, 16, 16), (352, 8, 8), (704, 4, 4), (1024,)]),
    "ResNet18_imagenet": _shapes(1, [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512,)]),
    "ResNet34_imagenet": _shapes(1, [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512,)]),
    "ResNet50_imagenet": _shapes(1, [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7),
                                     (2048,)]),
    "cnn_mnist_teacher": _shapes(2, [(32, 28, 28), (64, 14, 14), (128, 7, 7), (512,)]),
    "cnn_mnist_student": _shapes(2, [(16, 28, 28), (16, 14, 14), (32, 7, 7), (128,)]),
    "VGGCifar9": _shapes(2, [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2), (512,)]),
    "VGGCifar5": _shapes(2, [(64, 16, 16), (128, 8, 8), (256, 4, 4), (256, 2, 2), (256,)]),
}
for _name, _ref in REF.items():
    EXPECTED_FEATS[_name] = _ref["feat_shapes_b2"]

EXPECTED_INPUT = {n: (3, 32, 32) for n in ALL_NAMES}
EXPECTED_INPUT.update({n: (3, 224, 224) for n in IMAGENET_NAMES})
EXPECTED_INPUT.update({"cnn_mnist_teacher": (1, 28, 28), "cnn_mnist_student": (1, 28, 28)})

# parameter counts at num_classes=10 of the non-RepDistiller nets: CIFAR ResNet18/34 as in the
# common pytorch-cifar code, the seeds' numbers (VGGCifar from seeds/004's printout)
EXPECTED_PARAMS_10 = {
    "ResNet18": 11_173_962, "ResNet34": 21_282_122,
    "VGGCifar9": 9_228_362, "VGGCifar5": 964_170,
    "cnn_mnist_teacher": 3_309_578, "cnn_mnist_student": 206_922,
}


# --------------------------------------------------------------------------------------------- helpers

def build(name, num_classes=100, seed=0):
    torch.manual_seed(seed)
    return model_dict[name](num_classes=num_classes)


def make_input(model, seed=1, shape=None, full_size=False):
    """A small batch for ``model``: batch 2 at its input_shape, except that ImageNet nets get 64x64
    (their contract does not depend on the size) unless ``full_size``, then one 224x224 image."""
    c, h, w = shape or model.input_shape
    if h >= 224 and not full_size:
        h = w = 64
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1 if h >= 224 else 2, c, h, w, generator=g)


@torch.no_grad()
def calibrate(model, seed=2, shape=None):
    """Random BN affine parameters and running statistics from one batch, then eval(): eval-mode
    outputs depend on every buffer (a checkpoint that misses one cannot reproduce them) and stay in range."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in bns:
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.reset_running_stats()
        m.momentum = None  # cumulative average: running stats = this batch's stats
    model.train()
    model(make_input(model, seed=seed, shape=shape))
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def strip_prefix(state_dict, prefix="module."):
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def preact_kind(name):
    if name.startswith("wrn"):
        return "wrn"
    if name.startswith("ShuffleV2"):
        return "shufflev2"
    if name.startswith("MobileNetV2") or name in SEED_NAMES:
        return "ignored"
    return "relu"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small CPU forwards run fastest on one thread, and on a shared machine several threads spinning
    against other processes make them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=ALL_NAMES)
def zoo(request):
    """One calibrated eval-mode model per name, shared by the tests that only run it in eval mode
    (pytest groups tests by this fixture's parameter, so one model is alive at a time)."""
    model = calibrate(build(request.param))
    return SimpleNamespace(name=request.param, model=model, x=make_input(model))


# --------------------------------------------------------------------------------------------- registry

def test_model_dict_is_a_plain_dict_with_all_names():
    assert type(model_dict) is dict
    missing = [n for n in REPD_NAMES + EXTRA_NAMES if n not in model_dict]
    assert not missing, missing
    assert all(callable(f) for f in model_dict.values())


@pytest.mark.parametrize("name", ALL_NAMES)
def test_construction_is_silent_and_honours_num_classes(name, capfd):
    model = build(name, num_classes=7)
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"{name} printed during construction: {out!r} {err!r}"
    assert model.input_shape == EXPECTED_INPUT[name]
    assert type(model).input_shape == model.input_shape  # a class attribute: readable before building
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 7


# --------------------------------------------------------------------------------------------- shapes

@torch.no_grad()
def test_logits_feature_shapes_and_classifier(zoo):
    model, x = zoo.model, make_input(zoo.model, full_size=True)  # the shapes are those of input_shape
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 100
    seen = []
    handle = head.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    try:
        logits = model(x)
        feats, logits_f = model(x, is_feat=True)
        pre, logits_p = model(x, is_feat=True, preact=True)
    finally:
        handle.remove()
    assert logits.shape == (x.shape[0], 100)
    assert torch.equal(logits, logits_f) and torch.equal(logits, logits_p)
    assert isinstance(feats, list) and all(torch.is_tensor(f) for f in feats)
    assert [list(f.shape) for f in feats] == EXPECTED_FEATS[zoo.name]
    assert len(pre) == len(feats)
    assert [f.shape for f in pre] == [f.shape for f in feats]
    # get_classifier() is the module that makes the logits, from the pooled vector feats[-1]
    assert len(seen) == 3 and torch.equal(seen[1][1], logits_f) and torch.equal(seen[1][0], feats[-1])


@pytest.mark.parametrize("name", REPD_NAMES)
def test_state_dict_matches_repdistiller(name):
    ref = REF[name]
    model = build(name, num_classes=100)
    sd = model.state_dict()
    assert list(sd) == list(ref["keys"]), "keys or key order differ from RepDistiller"
    assert {k: list(v.shape) for k, v in sd.items()} == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_10))
def test_parameter_counts_of_other_nets(name):
    assert sum(p.numel() for p in build(name, num_classes=10).parameters()) == EXPECTED_PARAMS_10[name]


# --------------------------------------------------------------------------------------------- preact

@torch.no_grad()
def test_preact_semantics(zoo):
    model, x, kind = zoo.model, zoo.x, preact_kind(zoo.name)
    feats, _ = model(x, is_feat=True)
    pre, _ = model(x, is_feat=True, preact=True)
    assert torch.equal(pre[0], feats[0]) and torch.equal(pre[-1], feats[-1])
    stages = list(zip(pre[1:-1], feats[1:-1]))
    if kind == "ignored":
        assert all(torch.equal(p, f) for p, f in stages)
    elif kind == "relu":  # the stage output is ReLU(preact), and preact really is pre-ReLU
        for p, f in stages:
            assert torch.equal(F.relu(p), f)
            assert (p < 0).any()
    elif kind == "shufflev2":  # RepDistiller: the concatenation before ReLU, before the channel shuffle
        for (p, f), stage in zip(stages, [model.layer1, model.layer2, model.layer3]):
            assert torch.equal(stage[-1].shuffle(F.relu(p)), f)
            assert (p < 0).any()
    elif kind == "wrn":  # RepDistiller: the BN that follows each stage, applied to its output
        next_bn = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
        for (p, f), bn in zip(stages, next_bn):
            torch.testing.assert_close(p, bn(f))
            assert not torch.allclose(p, f)
    else:
        raise AssertionError(kind)


def test_feature_modes_have_no_side_effects_in_train_mode(zoo):
    """is_feat/preact forward passes update BN buffers exactly like a plain one (RepDistiller's WRN
    updated the running stats of its extra preact BN calls a second time)."""
    a = copy.deepcopy(zoo.model).train()
    b = copy.deepcopy(a)
    with torch.no_grad():
        la = a(zoo.x)
        _, lb = b(zoo.x, is_feat=True, preact=True)
    assert torch.equal(la, lb)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------- layers

class _Probe:
    """Extra hooks beside the LayerRecorder's: call counts, call order, and clones taken inside the hook."""

    def __init__(self, model, names):
        modules = dict(model.named_modules())
        self.counts = dict.fromkeys(names, 0)
        self.order, self.clones = [], []
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.counts[name] += 1
            self.order.append(name)
            self.clones.append(out.detach().clone())
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def test_layer_names_are_block_modules(zoo):
    names = zoo.model.layer_names()
    modules = dict(zoo.model.named_modules())
    assert len(names) >= 3 and len(set(names)) == len(names)
    assert all(n in modules for n in names), [n for n in names if n not in modules]
    bn = [n for n in names if isinstance(modules[n], _BatchNorm)]
    assert not bn, f"BatchNorm outputs get overwritten by in-place ops: {bn}"
    assert all(next(modules[n].parameters(), None) is None for n in names if isinstance(modules[n], Tap))


@torch.no_grad()
def test_layers_recorded_once_in_forward_order_and_identical_across_passes(zoo):
    """Three eval-mode passes (plain, is_feat, is_feat+preact): every listed module runs exactly once,
    in the order of layer_names(), and the three layer lists agree in count, shapes and values."""
    model, x = zoo.model, zoo.x
    names = model.layer_names()
    runs = []
    for kwargs in ({}, {"is_feat": True}, {"is_feat": True, "preact": True}):
        rec, probe = LayerRecorder(model), _Probe(model, names)
        try:
            with rec:
                out = model(x, **kwargs)
            layers = rec.layers
        finally:
            rec.remove()
            probe.remove()
        assert probe.counts == dict.fromkeys(names, 1), f"{kwargs}: a listed module ran more or fewer than once"
        assert probe.order == names, "layer_names() is not in forward order"
        assert len(layers) == len(names) and all(layer.shape[0] == x.shape[0] for layer in layers)
        if kwargs == {"is_feat": True}:
            feats = out[0]
            assert layers[-1] is feats[-1], "the last layer must be the pooled embedding"
            if zoo.name not in SEED_NAMES:  # stem and stage outputs are block outputs, hence layers
                assert all(any(layer is f for layer in layers) for f in feats[:-1])
        runs.append(layers)
    first = runs[0]
    for other in runs[1:]:
        assert [t.shape for t in other] == [t.shape for t in first]
        assert all(torch.equal(a, b) for a, b in zip(first, other))


def test_layers_are_not_overwritten_and_carry_gradients(zoo):
    """Train mode, with autograd: the tensors the recorder holds after forward equal clones taken inside
    the hooks (nothing in-place changed them later), and a loss on all layers back-propagates."""
    model = copy.deepcopy(zoo.model).train()
    names = model.layer_names()
    rec, probe = LayerRecorder(model), _Probe(model, names)
    try:
        with rec:
            logits = model(zoo.x)
        layers = rec.layers
    finally:
        rec.remove()
        probe.remove()
    assert len(layers) == len(names) == len(probe.clones)
    for name, layer, clone in zip(names, layers, probe.clones):
        assert torch.equal(layer.detach(), clone), f"{name}: output modified after its hook ran"
    assert all(layer.requires_grad for layer in layers)
    loss = logits.square().mean() + sum(layer.float().square().mean() for layer in layers)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_formats_load_strictly_and_reproduce_outputs(zoo):
    name, src, x = zoo.name, zoo.model, zoo.x
    with torch.no_grad():
        want = src(x)
    # RepDistiller's format {'model': state_dict, ...}, and DataParallel/DDP's 'module.'-prefixed keys
    repd = {"model": src.state_dict(), "epoch": 240, "best_acc": 0.0}
    wrapped = nn.DataParallel(src).state_dict()
    assert all(k.startswith("module.") for k in wrapped)
    fresh = build(name, seed=123).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), want), "a fresh model must differ before loading"

    buf = io.BytesIO()
    torch.save(repd, buf)  # through serialisation, as a RepDistiller .pth file
    buf.seek(0)
    loaded = torch.load(buf, map_location="cpu", weights_only=True)
    for state, dst in ((loaded["model"], copy.deepcopy(fresh)), (wrapped, fresh)):
        result = dst.load_state_dict(strip_prefix(state), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        with torch.no_grad():
            assert torch.equal(dst(x), want)


# --------------------------------------------------------------------------------------------- ImageNet

@pytest.mark.parametrize("name", IMAGENET_NAMES)
def test_imagenet_resnets_match_torchvision(name):
    arch = name.split("_")[0].lower()  # ResNet18_imagenet -> resnet18
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(weights=None)
    calibrate(tv, shape=(3, 224, 224))
    ours = build(name, num_classes=1000, seed=5).eval()
    tv_sd, our_sd = tv.state_dict(), ours.state_dict()
    assert list(our_sd) == list(tv_sd)
    assert all(our_sd[k].shape == v.shape for k, v in tv_sd.items())
    ours.load_state_dict(tv_sd, strict=True)
    x = make_input(ours, full_size=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- seeds

class _SeedMnistTeacher(nn.Module):  # seeds/000 TeacherModel, as written there
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2))
        self.fc1 = nn.Linear(128 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        feat = F.relu(self.fc1(self.features(x).view(x.size(0), -1)))
        return self.fc2(feat), feat


class _SeedMnistStudent(nn.Module):  # seeds/000 StudentModel
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2))
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        feat = F.relu(self.fc1(self.features(x).view(x.size(0), -1)))
        return self.fc2(feat), feat


def _seed_vgg(spec, n_out):
    """seeds/004's VGGCifar9/5 backbone from its literal list: 'c<out>' = conv/bn/relu, 'p' = pool."""
    mods, in_ch, k, p = [], 3, 0, 0
    for s in spec:
        if s == "p":
            mods.append((f"pool{p}", nn.MaxPool2d(2)))
            p += 1
        else:
            out = int(s[1:])
            mods += [(f"conv{k}", nn.Conv2d(in_ch, out, 3, padding=1, bias=False)),
                     (f"bn{k}", nn.BatchNorm2d(out)), (f"relu{k}", nn.ReLU(True))]
            in_ch, k = out, k + 1
    net = nn.Module()
    net.backbone = nn.Sequential(OrderedDict(mods))
    net.classifier = nn.Linear(n_out, 10)
    net.forward = lambda x: net.classifier(net.backbone(x).mean([2, 3]))
    return net


SEED_REFERENCES = {
    "cnn_mnist_teacher": _SeedMnistTeacher,
    "cnn_mnist_student": _SeedMnistStudent,
    "VGGCifar9": lambda: _seed_vgg("c64 c128 p c256 c256 p c512 c512 p c512 c512 p".split(), 512),
    "VGGCifar5": lambda: _seed_vgg("c64 p c128 p c256 p c256 p".split(), 256),
}


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seed_models_load_the_notebooks_state_dicts(name):
    torch.manual_seed(0)
    ref = SEED_REFERENCES[name]()
    ours = build(name, num_classes=10, seed=9).eval()
    calibrate(ref, shape=ours.input_shape)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == v.shape for k, v in ref_sd.items())
    ours.load_state_dict(ref_sd, strict=True)
    x = make_input(ours)
    with torch.no_grad():
        want = ref(x)
        feats, logits = ours(x, is_feat=True)
    if name.startswith("cnn_mnist"):
        want_logits, want_hidden = want
        assert torch.equal(feats[-1], want_hidden)  # the hidden the seed's feature distillation regresses
        assert not any(isinstance(m, _BatchNorm) for m in ours.modules())
    else:
        want_logits = want
        assert torch.equal(feats[-2], ref.backbone(x))  # the final conv map (hint/regressor target)
    assert torch.equal(logits, want_logits)
