"""The model zoo: ``model_dict[name](num_classes=N)`` builds a network.

Every model follows one contract (tests/test_models.py checks it for every name):

* ``forward(x, is_feat=False, preact=False)`` returns logits, or ``(feats, logits)`` with
  ``feats = [stem, stage1, ..., stageK, pooled]`` (RepDistiller's convention);
* ``layer_names()`` lists the modules whose outputs are the model's layers (block outputs, in forward
  order), recorded by :class:`models.layers.LayerRecorder`;
* ``get_classifier()`` returns the final ``nn.Linear``;
* ``input_shape`` is the (C, H, W) the model expects.

Optional: ``get_bn_before_relu()`` lists, per stage of ``feats[1:-1]``, the BatchNorm whose output (plus
the residual shortcut, where there is one) is that stage's pre-activation feature; OFD reads the teacher's.
The resnets, wrns, vggs, ResNet18/34/50 (CIFAR and ImageNet) and MobileNetV2 have it; the ShuffleNets
(whose pre-activations are concatenations) and the seed CNNs (no BatchNorm) do not.

The 22 RepDistiller names keep RepDistiller's state_dict keys, so its CIFAR-100 teacher checkpoints
load unchanged. ``ResNet18/34/50`` are the CIFAR nets (as in RepDistiller); the torchvision-compatible
ImageNet nets are ``ResNet{18,34,50}_imagenet``.
"""
from .mobilenetv2 import mobile_half, mobile_half_double
from .resnet import resnet8, resnet8x4, resnet14, resnet20, resnet32, resnet32x4, resnet44, resnet56, resnet110
from .resnet_imagenet import ResNet18_imagenet, ResNet34_imagenet, ResNet50_imagenet
from .resnetv2 import ResNet18, ResNet34, ResNet50
from .ShuffleNetv1 import ShuffleV1
from .ShuffleNetv2 import ShuffleV2, ShuffleV2_1_5
from .small import VGGCifar5, VGGCifar9, cnn_mnist_student, cnn_mnist_teacher
from .vgg import vgg8_bn, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn
from .wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

model_dict = {
    # RepDistiller (CIFAR)
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "ResNet50": ResNet50,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8_bn,
    "vgg11": vgg11_bn,
    "vgg13": vgg13_bn,
    "vgg16": vgg16_bn,
    "vgg19": vgg19_bn,
    "MobileNetV2": mobile_half,
    "ShuffleV1": ShuffleV1,
    "ShuffleV2": ShuffleV2,
    # the same families at other sizes (CIFAR; SemCKD / SimKD names)
    "ResNet18": ResNet18,
    "ResNet34": ResNet34,
    "MobileNetV2_1_0": mobile_half_double,
    "ShuffleV2_1_5": ShuffleV2_1_5,
    # ImageNet (224x224), torchvision state_dict layout
    "ResNet18_imagenet": ResNet18_imagenet,
    "ResNet34_imagenet": ResNet34_imagenet,
    "ResNet50_imagenet": ResNet50_imagenet,
    # seed notebooks
    "cnn_mnist_teacher": cnn_mnist_teacher,
    "cnn_mnist_student": cnn_mnist_student,
    "VGGCifar9": VGGCifar9,
    "VGGCifar5": VGGCifar5,
}

__all__ = ["model_dict"]
