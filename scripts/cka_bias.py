"""What the cka_group loss sees: CKA of real layer features at the training batch size, per estimator.

For a teacher and a student (checkpoints, or freshly initialised networks), on batches of real
un-augmented training images, this prints for every estimator/preprocessing choice the mean CKA of
the (student layer, teacher layer) pairs on the *same* images (what the loss maximises) and on
*shuffled* images (the student's batch permuted: unrelated examples, the estimator's chance level).
A choice carries signal when the matched value is high and the shuffled one is near 0; the biased
estimator's shuffled value is its offset (about D / (B + D) for independent isotropic features, less
for real low-rank ones: 0.17 for trained resnet20/resnet8 on Fashion-MNIST, flattened, batch 64).

    python scripts/cka_bias.py --path_t save/.../resnet56_best.pth --path_s save/.../resnet20_best.pth
    python scripts/cka_bias.py --model_t resnet56 --model_s resnet20      # untrained networks
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataset  # noqa: E402
from helper.checkpoint import build_teacher  # noqa: E402
from helper.cka import pool_features, unit_grams  # noqa: E402
from models import model_dict  # noqa: E402
from models.layers import LayerRecorder  # noqa: E402

CHOICES = [("biased", None), ("biased", 4), ("unbiased", None), ("unbiased", 4), ("unbiased", 2), ("biased", 1)]


def load(path, name, num_classes):
    if path:
        return build_teacher(path, num_classes, name)[0]
    return model_dict[name](num_classes=num_classes)


@torch.no_grad()
def layers(model, x):
    rec = LayerRecorder(model)
    with rec:
        model(x)
    out = rec.layers
    rec.remove()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path_t")
    p.add_argument("--path_s")
    p.add_argument("--model_t", default="resnet56")
    p.add_argument("--model_s", default="resnet20")
    p.add_argument("--dataset", default="fashionmnist")
    p.add_argument("--data_folder", default="./data")
    p.add_argument("--batch_size", type=int, default=64, help="the training batch size the loss sees")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    n_cls = dataset.num_classes(a.dataset)
    t = load(a.path_t, a.model_t, n_cls).eval()
    s = load(a.path_s, a.model_s, n_cls).eval()
    opt = argparse.Namespace(dataset=a.dataset, data_folder=a.data_folder, batch_size=a.batch_size, seed=a.seed)
    data = dataset.get_dataloaders(opt, s.input_shape)
    sums = {c: [0.0, 0.0] for c in CHOICES}
    dims = None
    n = 0
    for x in data.plain_train_images(a.batch_size * a.batches):
        if x.size(0) < a.batch_size:
            continue
        ft, fs = layers(t, x), layers(s, x)
        perm = torch.randperm(x.size(0))
        if dims is None:
            dims = ([f[0].numel() for f in fs], [f[0].numel() for f in ft])
        for est, pool in CHOICES:
            unb = est == "unbiased"
            gt = unit_grams([pool_features(f, pool) for f in ft], unbiased=unb)
            gs = unit_grams([pool_features(f, pool) for f in fs], unbiased=unb)
            gs_shuf = unit_grams([pool_features(f[perm], pool) for f in fs], unbiased=unb)
            sums[(est, pool)][0] += (gs @ gt.T).mean().item()
            sums[(est, pool)][1] += (gs_shuf @ gt.T).mean().item()
        n += 1
    src = "trained" if a.path_t else "untrained"
    print(f"{a.model_s} ({len(dims[0])} layers, D = {min(dims[0])}..{max(dims[0])}) vs {a.model_t} "
          f"({len(dims[1])} layers, D = {min(dims[1])}..{max(dims[1])}), {src}, {a.dataset}, "
          f"batch {a.batch_size}, {n} batches; mean over all L_s x L_t pairs")
    print(f"| estimator | pooling | same images | shuffled images | signal (gap) |")
    print(f"|---|---|---|---|---|")
    for est, pool in CHOICES:
        m, sh = (v / n for v in sums[(est, pool)])
        label = "flattened" if pool is None else ("global avg" if pool == 1 else f"{pool}x{pool}")
        print(f"| {est} | {label} | {m:.3f} | {sh:.3f} | {m - sh:.3f} |")


if __name__ == "__main__":
    main()
