"""Regenerates examples/tiny_cnn.onnx, the small model bundled for the README's first command.

Run with Debian's /usr/bin/python3 (torch). Seeded random weights: the model shows Kiln's
workflow, it is not trained.
"""
import torch
import torch.nn as nn


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        x = self.features(x).flatten(1)
        return torch.softmax(self.classifier(x), dim=1)


def main():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(1, 1, 28, 28)
    torch.onnx.export(model, x, "tiny_cnn.onnx", opset_version=17, input_names=["image"],
                      output_names=["probabilities"],
                      dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})


if __name__ == "__main__":
    main()
