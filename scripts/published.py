"""Published top-1 accuracies (%) that scripts/summarize.py prints beside ours, each with where it was read
and the protocol its runs used.

Each table is kept in its source's shape (rows renamed to our method labels where said), so a typo is easy
to spot against the source. A table belongs to one *source* (``SOURCES``), which fixes two things:

* the loss weights of its runs. For RepDistiller's, SemCKD's and SimKD's tables a number is shown beside
  one of our rows only when the row ran with that source's weights for the method, because the same method
  scores differently under the two (RepDistiller's KD at -c 0.1 -d 0.9 vs SemCKD's at -c 1 -d 1: 73.33 vs
  74.42 on resnet32x4 -> resnet8x4). The later sources tune their weights per pair (DKD's beta, LS's KD
  weight and temperature): their numbers are shown beside every row of the method, whose label already
  says which loop options it used (KD vs KD+LS vs KD+DOT vs KD+CTKD);
* the :class:`Protocol`: epochs, augmentation beyond crop and flip, how many runs a number averages, and
  whether it is the best or the last epoch. Only what a source states; ``?`` where it does not say.

Where each was read (a dagger marks numbers not read in a README, recalled or quoted from a paper):

* ``repd``: RepDistiller README, last epoch (RepDistiller#16), every method with alpha = 0 (no KD term)
  except KD. The CRD+KD row is the CRD paper's, recalled (dagger). RepDistiller, SemCKD and SimKD: 240
  epochs, their train_student.py default.
* ``semckd``: SemCKD README image, mean +- std, gamma = alpha = 1 (``-c 1 -d 1``).
* ``simkd``: SimKD README, gamma = alpha = 1; SimKD itself ``-c 0 -d 0 -b 1`` with ``-f 2``.
* ``crd_imagenet``: CRD paper Table 3 (ResNet34 -> ResNet18), given as top-1 error, recalled (dagger).
* ``dkd`` / ``dkd_imagenet``: mdistiller README, DKD tables. The DKD paper says "all results are the average
  over 5/3 trials on CIFAR100/ImageNet" (quoted in mdistiller#30, where its authors add that it reports the
  best epoch). Epochs: mdistiller's configs (240 CIFAR-100, 100 ImageNet).
* ``dot`` / ``dot_imagenet``: mdistiller README, DOT tables.
* ``ls`` / ``ls_mlkd``: logit-standardization-KD README (the LS paper's repository), CIFAR-100 table of
  same-architecture pairs. Its note "due to average operation and randomness" says the numbers are
  averages, not of how many runs. The MLKD rows ran the MLKD protocol: a second, strongly augmented view
  (RandAugment) and the 480 epochs of the MLKD configs of the time (the LS repository's copy still says
  480; Multi-Level-Logit-Distillation's own configs say 240 since 2024-09). ``ls_imagenet``: KD+LS on
  ImageNet, from the LS paper, not in the README (dagger).
* ``dist`` / ``dist_imagenet``: DIST_KD README (CIFAR-100 table: mean +- std; ImageNet: the baseline and
  stronger-teacher tables, torchvision teacher and student). ImageNet epochs: its resnet_dist.yaml.
* ``reviewkd_imagenet``: ReviewKD's ``ImageNet/README.md`` (ResNet34 teacher, 4 GPUs x 64); epochs: the
  default of its imagenet_amp.py (the README's command does not set them).
* ``ctkd_imagenet``: CTKD README (its own ResNet34 teacher, 73.96, and student, 70.26); epochs: its
  run_imagenet_distill.sh.
* ``rcka``: the RCKA paper (Zhou et al. IJCAI 2024), resnet32x4 -> resnet8x4, as quoted by the issue that
  asked for it; not read here (dagger).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

# ---- the tables, as in the sources ----------------------------------------------------------------

REPD_SAME = """
| teacher -> student | wrn_40_2->wrn_16_2 | wrn_40_2->wrn_40_1 | resnet56->resnet20 | resnet110->resnet20 | resnet110->resnet32 | resnet32x4->resnet8x4 | vgg13->vgg8 |
| Teacher | 75.61 | 75.61 | 72.34 | 74.31 | 74.31 | 79.42 | 74.64 |
| Student | 73.26 | 71.98 | 69.06 | 69.06 | 71.14 | 72.50 | 70.36 |
| KD | 74.92 | 73.54 | 70.66 | 70.67 | 73.08 | 73.33 | 72.98 |
| FitNet | 73.58 | 72.24 | 69.21 | 68.99 | 71.06 | 73.50 | 71.02 |
| AT | 74.08 | 72.77 | 70.55 | 70.22 | 72.31 | 73.44 | 71.43 |
| SP | 73.83 | 72.43 | 69.67 | 70.04 | 72.69 | 72.94 | 72.68 |
| CC | 73.56 | 72.21 | 69.63 | 69.48 | 71.48 | 72.97 | 70.71 |
| VID | 74.11 | 73.30 | 70.38 | 70.16 | 72.61 | 73.09 | 71.23 |
| RKD | 73.35 | 72.22 | 69.61 | 69.25 | 71.82 | 71.90 | 71.48 |
| PKT | 74.54 | 73.45 | 70.34 | 70.25 | 72.61 | 73.64 | 72.88 |
| AB | 72.50 | 72.38 | 69.47 | 69.53 | 70.98 | 73.17 | 70.94 |
| FT | 73.25 | 71.59 | 69.84 | 70.22 | 72.37 | 72.86 | 70.58 |
| FSP | 72.91 | N/A | 69.95 | 70.11 | 71.89 | 72.62 | 70.23 |
| NST | 73.68 | 72.24 | 69.60 | 69.53 | 71.96 | 73.30 | 71.53 |
| CRD | 75.48 | 74.14 | 71.16 | 71.46 | 73.48 | 75.51 | 73.94 |
| CRD+KD | 75.64 | 74.38 | 71.63 | 71.56 | 73.75 | 75.46 | 74.29 |
"""

REPD_CROSS = """
| teacher -> student | vgg13->MobileNetV2 | ResNet50->MobileNetV2 | ResNet50->vgg8 | resnet32x4->ShuffleV1 | resnet32x4->ShuffleV2 | wrn_40_2->ShuffleV1 |
| Teacher | 74.64 | 79.34 | 79.34 | 79.42 | 79.42 | 75.61 |
| Student | 64.60 | 64.60 | 70.36 | 70.50 | 71.82 | 70.50 |
| KD | 67.37 | 67.35 | 73.81 | 74.07 | 74.45 | 74.83 |
| FitNet | 64.14 | 63.16 | 70.69 | 73.59 | 73.54 | 73.73 |
| AT | 59.40 | 58.58 | 71.84 | 71.73 | 72.73 | 73.32 |
| SP | 66.30 | 68.08 | 73.34 | 73.48 | 74.56 | 74.52 |
| CC | 64.86 | 65.43 | 70.25 | 71.14 | 71.29 | 71.38 |
| VID | 65.56 | 67.57 | 70.30 | 73.38 | 73.40 | 73.61 |
| RKD | 64.52 | 64.43 | 71.50 | 72.28 | 73.21 | 72.21 |
| PKT | 67.13 | 66.52 | 73.01 | 74.10 | 74.69 | 73.89 |
| AB | 66.06 | 67.20 | 70.65 | 73.55 | 74.31 | 73.34 |
| FT | 61.78 | 60.99 | 70.29 | 71.75 | 72.50 | 72.03 |
| NST | 58.16 | 64.96 | 71.28 | 74.12 | 74.68 | 74.89 |
| CRD | 69.73 | 69.11 | 74.30 | 75.11 | 75.65 | 76.05 |
| CRD+KD | 69.94 | 69.54 | 74.58 | 75.12 | 76.05 | 76.27 |
"""

SEMCKD = """
| teacher -> student | resnet32x4->vgg8 | resnet32x4->vgg13 | vgg13->ShuffleV2 | resnet32x4->ShuffleV2 | wrn_40_2->MobileNetV2 | vgg13->vgg8 | resnet32x4->resnet8x4 |
| Teacher | 79.42 | 79.42 | 74.64 | 79.42 | 75.61 | 74.64 | 79.42 |
| Student | 70.46±0.29 | 74.82±0.22 | 72.60±0.12 | 72.60±0.12 | 65.43±0.29 | 70.46±0.29 | 73.09±0.30 |
| KD | 72.73±0.15 | 77.17±0.11 | 75.60±0.21 | 75.49±0.24 | 68.70±0.22 | 73.38±0.05 | 74.42±0.05 |
| FitNet | 72.91±0.18 | 77.06±0.14 | 75.44±0.11 | 75.82±0.22 | 68.64±0.12 | 73.63±0.11 | 74.32±0.08 |
| AT | 71.90±0.13 | 77.23±0.19 | 75.41±0.10 | 75.91±0.14 | 68.79±0.13 | 73.51±0.08 | 75.07±0.03 |
| SP | 73.12±0.10 | 77.72±0.33 | 75.54±0.18 | 75.77±0.08 | 68.48±0.36 | 73.53±0.23 | 74.29±0.07 |
| VID | 73.19±0.23 | 77.45±0.13 | 75.22±0.07 | 75.55±0.18 | 68.37±0.24 | 73.63±0.07 | 74.55±0.10 |
| HKD | 72.63±0.12 | 76.76±0.13 | 76.24±0.09 | 76.64±0.05 | 69.23±0.16 | 73.06±0.24 | 74.86±0.21 |
| SemCKD | 75.27±0.13 | 79.43±0.02 | 76.39±0.12 | 77.62±0.32 | 69.61±0.05 | 74.43±0.25 | 76.23±0.04 |
"""

SIMKD = """
| teacher -> student | resnet32x4->resnet8x4 | resnet32x4->vgg8 | resnet32x4->ShuffleV2_1_5 |
| Teacher | 79.42 | 79.42 | 79.42 |
| Student | 73.09 | 70.46 | 74.15 |
| KD | 74.42 | 72.73 | 76.82 |
| FitNet | 74.32 | 72.91 | 77.12 |
| AT | 75.07 | 71.90 | 77.51 |
| SP | 74.29 | 73.12 | 77.18 |
| VID | 74.55 | 73.19 | 77.11 |
| CRD | 75.59 | 73.54 | 77.66 |
| SRRL | 75.39 | 73.23 | 77.55 |
| SemCKD | 76.23 | 75.27 | 79.13 |
| SimKD | 78.08 | 75.76 | 79.54 |
"""

# top-1 *error* (%), CRD paper Table 3, recalled
CRD_IMAGENET_ERR = """
| teacher -> student | ResNet34_imagenet->ResNet18_imagenet |
| Teacher | 26.69 |
| Student | 30.25 |
| AT | 29.30 |
| KD | 29.34 |
| SP | 29.38 |
| CC | 30.04 |
| KD (online) | 29.45 |
| CRD | 28.83 |
| CRD+KD | 28.62 |
"""

# mdistiller README, "Decoupled Knowledge Distillation" tables (its KD rows are RepDistiller's numbers,
# shown under RepD). In the second table the README's last column reads "ResNet32x4 / MobileNet-V2", but its
# KD cell, 74.45, is RepDistiller's resnet32x4 -> ShuffleV2 number, and the LS README lists the same DKD
# 77.07 under ShuffleV2: typed as ShuffleV2.
DKD_SAME = """
| teacher -> student | resnet56->resnet20 | resnet110->resnet32 | resnet32x4->resnet8x4 | wrn_40_2->wrn_16_2 | wrn_40_2->wrn_40_1 | vgg13->vgg8 |
| DKD | 71.97 | 74.11 | 76.32 | 76.23 | 74.81 | 74.68 |
"""

DKD_CROSS = """
| teacher -> student | resnet32x4->ShuffleV1 | wrn_40_2->ShuffleV1 | vgg13->MobileNetV2 | ResNet50->MobileNetV2 | resnet32x4->ShuffleV2 |
| DKD | 76.45 | 76.70 | 69.71 | 70.35 | 77.07 |
"""

DKD_IMAGENET = """
| teacher -> student | ResNet34_imagenet->ResNet18_imagenet |
| KD | 71.03 |
| DKD | 71.70 |
"""

# mdistiller README, "DOT" tables (KD rows: RepDistiller's on CIFAR-100, mdistiller's DKD table on ImageNet)
DOT_CIFAR = """
| teacher -> student | resnet32x4->resnet8x4 | vgg13->vgg8 | resnet32x4->ShuffleV2 |
| KD+DOT | 75.12 | 73.77 | 75.55 |
"""

DOT_IMAGENET = """
| teacher -> student | ResNet34_imagenet->ResNet18_imagenet |
| KD+DOT | 71.72 |
"""

# logit-standardization-KD README, table 1 (same architectures). Rows renamed: "KD+Ours" -> KD+LS, "CTKD" ->
# KD+CTKD, "CTKD+Ours" -> KD+CTKD+LS, "DKD+Ours" -> DKD+LS, "MLKD+Ours" -> MLKD+LS. Its KD and DKD rows
# repeat RepDistiller's and the DKD paper's numbers and are left out. The CTKD README's CIFAR-100 table has
# the same KD+CTKD numbers on the pairs both list.
LS_SAME = """
| teacher -> student | resnet32x4->resnet8x4 | vgg13->vgg8 | wrn_40_2->wrn_40_1 | wrn_40_2->wrn_16_2 | resnet56->resnet20 | resnet110->resnet32 | resnet110->resnet20 |
| KD+LS | 76.62 | 74.36 | 74.37 | 76.11 | 71.43 | 74.17 | 71.48 |
| KD+CTKD | 73.39 | 73.52 | 73.93 | 75.45 | 71.19 | 73.52 | 70.99 |
| KD+CTKD+LS | 76.67 | 74.47 | 74.58 | 76.08 | 71.34 | 74.01 | 71.39 |
| DKD+LS | 77.01 | 74.81 | 74.89 | 76.39 | 72.32 | 74.29 | 71.85 |
| MLKD | 77.08 | 75.18 | 75.35 | 76.63 | 72.19 | 74.11 | 71.89 |
| MLKD+LS | 78.28 | 75.22 | 75.56 | 76.95 | 72.33 | 74.32 | 72.27 |
"""

LS_IMAGENET = """
| teacher -> student | ResNet34_imagenet->ResNet18_imagenet |
| KD+LS | 71.42 |
"""

# DIST_KD README, CIFAR-100 table (one row per pair there; teacher and student accuracies in its brackets
# are RepDistiller's, left out)
DIST_CIFAR = """
| teacher -> student | wrn_40_2->wrn_40_1 | resnet56->resnet20 | resnet32x4->resnet8x4 | ResNet50->MobileNetV2 | resnet32x4->ShuffleV1 | resnet32x4->ShuffleV2 |
| DIST | 74.43±0.24 | 71.75±0.30 | 76.31±0.19 | 68.66±0.23 | 76.34±0.18 | 77.35±0.25 |
"""

# DIST_KD README, ImageNet: the baseline table (ResNet-34 -> ResNet-18) and the stronger-teacher table's row
# for the same pair ("KD (T=4)")
DIST_IMAGENET = """
| teacher -> student | ResNet34_imagenet->ResNet18_imagenet |
| Teacher | 73.31 |
| Student | 69.76 |
| KD | 71.21 |
| DIST | 72.07 |
"""

# ReviewKD ImageNet/README.md ("Baseline" is its student trained alone)
REVIEWKD_IMAGENET = """
| teacher -> student | ResNet34_imagenet->ResNet18_imagenet |
| Student | 69.75 |
| ReviewKD | 71.61 |
"""

# CTKD README, ImageNet top-1 ("+CTKD" -> KD+CTKD)
CTKD_IMAGENET = """
| teacher -> student | ResNet34_imagenet->ResNet18_imagenet |
| Teacher | 73.96 |
| Student | 70.26 |
| KD | 70.83 |
| KD+CTKD | 71.32 |
"""

RCKA = """
| teacher -> student | resnet32x4->resnet8x4 |
| RCKA | 76.11 |
"""

# ---- protocols: the weights (cls, div, beta) each source used per method --------------------------

REPD_BETA = {"KD": 0, "FitNet": 100, "AT": 1000, "SP": 3000, "CC": 0.02, "VID": 1, "RKD": 1, "PKT": 30000,
             "AB": 1, "FT": 200, "FSP": 50, "NST": 50, "CRD": 0.8, "CRD+KD": 0.8}
SEMCKD_BETA = {"KD": 0, "FitNet": 100, "AT": 1000, "SP": 3000, "CC": 0.02, "VID": 1, "RKD": 1, "PKT": 30000,
               "CRD": 0.8, "SRRL": 1, "SemCKD": 400, "HKD": 1}


def repd_weights(label: str):
    if label == "KD":
        return (0.1, 0.9, 0.0)
    if label == "CRD+KD":
        return (1.0, 1.0, 0.8)
    return (1.0, 0.0, float(REPD_BETA[label])) if label in REPD_BETA else None


def semckd_weights(label: str):
    if label == "SimKD":
        return (0.0, 0.0, 1.0)
    return (1.0, 1.0, float(SEMCKD_BETA[label])) if label in SEMCKD_BETA else None


def any_weights(label: str):
    return "any"


def _parse(text: str, error: bool = False) -> dict:
    """{label: {(teacher, student): (mean, std or None)}} from one pipe table ('N/A' cells left out)."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in text.strip().splitlines()]
    pairs = [tuple(h.split("->")) for h in rows[0][1:]]
    out: dict = {}
    for row in rows[1:]:
        label, cells = row[0], row[1:]
        if len(cells) != len(pairs):
            raise ValueError(f"published table row {label!r}: {len(cells)} cells for {len(pairs)} pairs")
        for pair, cell in zip(pairs, cells):
            if cell in ("N/A", "", "-"):
                continue
            mean, _, std = cell.partition("±")
            m = float(mean)
            out.setdefault(label, {})[pair] = (100.0 - m if error else m, float(std) if std else None)
    return out


def _merge(*tables) -> dict:
    out: dict = {}
    for t in tables:
        for label, cells in t.items():
            out.setdefault(label, {}).update(cells)
    return out


def _rows(table: dict, labels) -> dict:
    return {label: cells for label, cells in table.items() if label in labels}


@dataclass(frozen=True)
class Protocol:
    """How a source's numbers were obtained; each field as its source states it, ``?`` where it does not."""
    epochs: str = "?"
    augment: str = "aug ?"          # beyond the dataset's standard crop and flip
    runs: str = "? runs"            # how many runs a number averages
    pick: str = "? epoch"           # the best or the last epoch's accuracy

    def text(self) -> str:
        return f"{self.epochs} ep · {self.augment} · {self.runs} · {self.pick}"


STD = "no extra aug"


@dataclass(frozen=True)
class Source:
    short: str                       # shown in the cells
    where: str                       # where the numbers were read
    table: dict                      # {label: {(teacher, student): (mean, std or None)}}
    weights: Callable                # label -> (cls, div, beta) of its runs, "any", or None (not run)
    protocol: Protocol
    recalled: frozenset = field(default_factory=frozenset)   # labels not read in a README (dagger)


_LS = _parse(LS_SAME)
_LS_README = "logit-standardization-KD README, table 1"
_MDISTILLER_DKD = "mdistiller README, DKD tables (runs and best epoch: the DKD paper, mdistiller#30)"
_MDISTILLER_DOT = "mdistiller README, DOT tables"
SOURCES = {
    "repd": Source("RepD", "RepDistiller README (last epoch: RepDistiller#16)",
                   _merge(_parse(REPD_SAME), _parse(REPD_CROSS)), repd_weights,
                   Protocol("240", STD, "? runs", "last epoch"), frozenset({"CRD+KD"})),
    "semckd": Source("SemCKD", "SemCKD README image", _parse(SEMCKD), semckd_weights,
                     Protocol("240", STD, "mean±std of ? runs")),
    "simkd": Source("SimKD", "SimKD README", _parse(SIMKD), semckd_weights, Protocol("240", STD)),
    "crd_imagenet": Source("CRD paper", "CRD paper Table 3, recalled", _parse(CRD_IMAGENET_ERR, error=True),
                           any_weights, Protocol(),
                           frozenset({"Teacher", "Student", "AT", "KD", "SP", "CC", "KD (online)", "CRD", "CRD+KD"})),
    "dkd": Source("mdistiller", _MDISTILLER_DKD, _merge(_parse(DKD_SAME), _parse(DKD_CROSS)), any_weights,
                  Protocol("240", STD, "mean of 5", "best epoch")),
    "dkd_imagenet": Source("mdistiller", _MDISTILLER_DKD, _parse(DKD_IMAGENET), any_weights,
                           Protocol("100", STD, "mean of 3", "best epoch")),
    "dot": Source("mdistiller", _MDISTILLER_DOT, _parse(DOT_CIFAR), any_weights, Protocol("240", STD)),
    "dot_imagenet": Source("mdistiller", _MDISTILLER_DOT, _parse(DOT_IMAGENET), any_weights, Protocol("100", STD)),
    "ls": Source("LS", _LS_README, _rows(_LS, {"KD+LS", "KD+CTKD", "KD+CTKD+LS", "DKD+LS"}), any_weights,
                 Protocol("240", STD, "mean of ? runs")),
    "ls_mlkd": Source("LS", _LS_README, _rows(_LS, {"MLKD", "MLKD+LS"}), any_weights,
                      Protocol("480", "+RandAugment view", "mean of ? runs")),
    "ls_imagenet": Source("LS paper", "LS paper (CVPR 2024), not in its README", _parse(LS_IMAGENET), any_weights,
                          Protocol(), frozenset({"KD+LS"})),
    "dist": Source("DIST_KD", "DIST_KD README", _parse(DIST_CIFAR), any_weights,
                   Protocol("?", STD, "mean±std of ? runs")),
    "dist_imagenet": Source("DIST_KD", "DIST_KD README", _parse(DIST_IMAGENET), any_weights, Protocol("100", STD)),
    "reviewkd_imagenet": Source("ReviewKD", "ReviewKD ImageNet/README.md", _parse(REVIEWKD_IMAGENET), any_weights,
                                Protocol("100", STD)),
    "ctkd_imagenet": Source("CTKD", "CTKD README (its own ResNet34 teacher)", _parse(CTKD_IMAGENET), any_weights,
                            Protocol("120", STD)),
    "rcka": Source("RCKA paper", "RCKA paper (IJCAI 2024) as quoted by the issue, not read", _parse(RCKA),
                   any_weights, Protocol(), frozenset({"RCKA"})),
}


class Found(NamedTuple):
    source: str          # the source's short name
    mean: float
    std: float | None
    recalled: bool       # not read in a README (dagger)
    protocol: Protocol
    where: str           # where it was read


def _close(a, b) -> bool:
    return all(abs(float(x) - float(y)) < 1e-9 for x, y in zip(a, b))


def lookup(label: str, teacher: str, student: str, weights=None) -> list:
    """Published numbers for one cell, one :class:`Found` per source that has it.

    ``weights``: the (cls, div, beta) of our row; None for the Teacher and Student rows (every source).
    """
    out = []
    for src in SOURCES.values():
        cell = src.table.get(label, {}).get((teacher, student))
        if cell is None:
            continue
        if weights is not None:
            w = src.weights(label)
            if w is None or (w != "any" and not _close(w, weights)):
                continue
        out.append(Found(src.short, cell[0], cell[1], label in src.recalled, src.protocol, src.where))
    return out


def pairs_of(source: str) -> list:
    """The (teacher, student) columns of a source, in its table order."""
    seen = []
    for cells in SOURCES[source].table.values():
        for pair in cells:
            if pair not in seen:
                seen.append(pair)
    return seen


def teacher_accuracy(arch: str):
    """RepDistiller's published CIFAR-100 top-1 of teacher ``arch`` (its tables' Teacher row), or None."""
    for (teacher, _), (mean, _) in SOURCES["repd"].table.get("Teacher", {}).items():
        if teacher == arch:
            return mean
    return None
