"""Write the tiny ResNet fixture used by tests/vision_resnet.rs.

The network has torchvision's ResNet structure and state-dict key names (conv1, bn1,
layer1.0.conv1, ..., layerN.0.downsample.{0,1}, fc) with BasicBlock layers [2, 1, 1, 1]
and widths 8, 16, 32, 64, so the files stay a few hundred kilobytes. BatchNorm running
statistics are randomised so that eval-mode normalisation is exercised.

Usage: python scripts/make-resnet-fixture.py tests/data
Writes resnet-tiny.pth (torch.save of the state dict) and resnet-tiny-reference.pth
(a dict with "input" [2, 3, 32, 32] and "logits" [2, 5] from the model in eval mode, in
the legacy torch.save format).
"""

import sys
from pathlib import Path

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self, layers=(2, 1, 1, 1), widths=(8, 16, 32, 64), classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = widths[0]
        for index, (blocks, planes) in enumerate(zip(layers, widths)):
            stride = 1 if index == 0 else 2
            modules = []
            for block in range(blocks):
                modules.append(BasicBlock(inplanes, planes, stride if block == 0 else 1))
                inplanes = planes
            setattr(self, f"layer{index + 1}", nn.Sequential(*modules))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def check_keys_match_torchvision(model):
    try:
        from torchvision.models.resnet import BasicBlock as TvBlock, ResNet
    except ImportError:
        print("torchvision not installed; key names not cross-checked")
        return
    reference = ResNet(TvBlock, [2, 1, 1, 1], num_classes=5).state_dict()
    assert list(reference) == list(model.state_dict()), "state-dict keys differ from torchvision"


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data")
    torch.manual_seed(0)
    model = TinyResNet()
    check_keys_match_torchvision(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.num_batches_tracked.fill_(7)
    model.eval()
    # Already normalised inputs (the ImageNet mean and std are applied before the network).
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images[1] = images[1] * 2.0 + 0.5
    with torch.no_grad():
        logits = model(images)
    torch.save(model.state_dict(), out / "resnet-tiny.pth")
    # The legacy (non-zip) format keeps this file readable by the crate's legacy reader
    # too, so the test exercises both torch.save formats.
    torch.save(
        {"input": images.clone(), "logits": logits},
        out / "resnet-tiny-reference.pth",
        _use_new_zipfile_serialization=False,
    )
    print(logits)


if __name__ == "__main__":
    main()
