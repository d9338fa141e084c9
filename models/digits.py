#!/usr/bin/python3
"""Trains Kiln's real-data accuracy model: a small CNN on scikit-learn's handwritten digits.

Run with Debian's interpreter (torch 1.13, scikit-learn, numpy, onnx); no network is needed,
scikit-learn ships the data set:

    /usr/bin/python3 models/digits.py --out ~/.cache/kiln/models
    /usr/bin/python3 models/digits.py --out DIR --force        # retrain even when files exist

Data: sklearn.datasets.load_digits (1797 8x8 grey images, 10 classes, values 0..16), scaled to
[0, 1], upsampled to 32x32 (bilinear, torch.nn.functional.interpolate, align_corners=False),
then normalized as (x - MEAN) / STD with the scalar mean and standard deviation of the training
pixels (printed, and stored in the ONNX model's metadata as "normalize_mean"/"normalize_std").
The split is fixed: 1297 train / 500 test, stratified by class, random_state=0.

Model (eval mode, ~61k parameters):
    Conv3x3(1->16)-BN-ReLU-MaxPool2      32x32 -> 16x16
    Conv3x3(16->32)-BN-ReLU-MaxPool2     16x16 -> 8x8
    Conv3x3(32->64)-BN-ReLU              8x8
    ReLU(x + BN(Conv3x3(64->64)(x)))     a residual block, 8x8
    GlobalAvgPool, Linear(64->10)
Trained with Adam (lr 3e-3, cosine decay, batch 32, 8 epochs), torch.manual_seed(0), two threads
and deterministic algorithms, so reruns on the same torch build give byte-identical files. On two
cores it trains in about 3-10 s (the budget is 60 s) and reaches 99.6% test accuracy (498/500);
the script fails below 95%.

Writes into --out (each under a temporary name, then renamed):
    digits.onnx        input "input" f32 [batch,1,32,32] (normalized images), output "logits"
                       f32 [batch,10]; opset 17, dynamic batch.
    digits_train.npz   "input": the 1297 normalized training images, f32 [1297,1,32,32]; usable
                       directly as calibration data (`kiln build --calib`, `kiln compare --calib`).
    digits_test.npz    "input" f32 [500,1,32,32] and "label" i64 [500].
    digits.io.npz      as export.py writes for every model: "input" (the first 8 test images)
                       and PyTorch's "logits" for them.
When all four files exist the script skips unless --force.
"""

import argparse
import os
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

OPSET = 17
EPOCHS = 8
BATCH = 32
LR = 3e-3
TEST_SIZE = 500
MIN_ACCURACY = 0.95
IO_SAMPLES = 8
FILES = ("digits.onnx", "digits_train.npz", "digits_test.npz", "digits.io.npz")


def load_data():
    """The split, upsampled and normalized images: (x_train, y_train, x_test, y_test, mean, std)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # [1797,8,8] in [0,1]
    labels = digits.target.astype(np.int64)
    x = torch.from_numpy(images).unsqueeze(1)  # [N,1,8,8]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).numpy()
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=TEST_SIZE, random_state=0,
                                           stratify=labels)
    x_train, x_test = x[idx_train], x[idx_test]
    mean = float(x_train.mean())
    std = float(x_train.std())
    x_train = np.ascontiguousarray((x_train - mean) / std, dtype=np.float32)
    x_test = np.ascontiguousarray((x_test - mean) / std, dtype=np.float32)
    return x_train, labels[idx_train], x_test, labels[idx_test], mean, std


def conv_bn(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = conv_bn(1, 16)
        self.block2 = conv_bn(16, 32)
        self.block3 = conv_bn(32, 64)
        self.res = conv_bn(64, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        x = F.relu(x + self.res(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def train(x_train, y_train):
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(ys), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(order), BATCH):
            b = order[i:i + BATCH]
            logits = model(xs[b])
            loss = F.cross_entropy(logits, ys[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss) * len(b)
            correct += int((logits.argmax(1) == ys[b]).sum())
            total += len(b)
        sched.step()
        print("  epoch %d: loss %.4f, train accuracy %.4f" % (epoch + 1, loss_sum / total, correct / total))
        sys.stdout.flush()
    model.eval()
    return model


def _tmp_name(path):
    # Keeps the real extension last (np.savez appends ".npz" to names that lack it).
    d, base = os.path.split(path)
    return os.path.join(d, ".tmp-%d-%s" % (os.getpid(), base))


def export(model, out_dir, x_train, x_test, y_test, mean, std):
    paths = [os.path.join(out_dir, f) for f in FILES]
    tmps = [_tmp_name(p) for p in paths]
    try:
        example = torch.from_numpy(x_test[:IO_SAMPLES])
        with torch.no_grad():
            logits = model(example)
            torch.onnx.export(model, (example,), tmps[0], export_params=True, opset_version=OPSET,
                              do_constant_folding=True, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        m = onnx.load(tmps[0])
        m.doc_string = ("Handwritten digits CNN (models/digits.py); input: 32x32 images scaled to [0,1] and "
                        "normalized as (x - normalize_mean) / normalize_std")
        for key, value in (("normalize_mean", repr(mean)), ("normalize_std", repr(std))):
            prop = m.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.checker.check_model(m)
        onnx.save(m, tmps[0])
        np.savez(tmps[1], input=x_train)
        np.savez(tmps[2], input=x_test, label=y_test)
        np.savez(tmps[3], input=np.ascontiguousarray(x_test[:IO_SAMPLES]),
                 logits=np.ascontiguousarray(logits.numpy(), dtype=np.float32))
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    finally:
        for p in tmps:
            if os.path.exists(p):
                os.remove(p)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--force", action="store_true", help="retrain even when the files exist")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if not a.force and all(os.path.exists(os.path.join(a.out, f)) for f in FILES):
        print("digits: exists, skipped (use --force to retrain): " + ", ".join(FILES))
        return 0

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test, mean, std = load_data()
    print("digits: %d train / %d test images, 1x32x32, normalized with mean %.6f std %.6f" % (
        len(y_train), len(y_test), mean, std))
    t0 = time.monotonic()
    model = train(x_train, y_train)
    seconds = time.monotonic() - t0
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    accuracy = float((pred == y_test).mean())
    print("digits: trained in %.1f s, test accuracy %.4f (%d/%d)" % (
        seconds, accuracy, int((pred == y_test).sum()), len(y_test)))
    if accuracy < MIN_ACCURACY:
        print("digits: FAILED: test accuracy %.4f < %.2f" % (accuracy, MIN_ACCURACY), file=sys.stderr)
        return 1
    paths = export(model, a.out, x_train, x_test, y_test, mean, std)
    for path in paths:
        print("  %s (%.1f KB)" % (path, os.path.getsize(path) / 1e3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
