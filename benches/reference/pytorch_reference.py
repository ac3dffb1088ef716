"""PyTorch reference timings on this machine's CPU, for docs/PERFORMANCE.md.

Not part of the build or the tests: run by hand beside kdscout's own benchmarks, in the same
sitting, so both see the same machine state.

    python3 benches/reference/pytorch_reference.py            # all
    python3 benches/reference/pytorch_reference.py step       # resnet20 train step only
    python3 benches/reference/pytorch_reference.py conv       # resnet56 3x3 convs only
    python3 benches/reference/pytorch_reference.py kd         # resnet56 -> resnet20 KD step only

The resnet20 definition is RepDistiller's CIFAR ResNet (BasicBlock, 16/32/64 channels,
1x1-conv + BN shortcut when the shape changes, 100 classes).
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class ResNet(nn.Module):
    def __init__(self, depth=20, num_classes=100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, inplanes = [], 16
        for planes, stride in [(16, 1), (32, 2), (64, 2)]:
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def conv_flops(model, x):
    """Multiply-add FLOPs (x2) of convs and linears in one forward pass."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total[0] += 2 * out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total[0]


def bench_step(batch=64, steps=20):
    model = ResNet(20)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))
    flops = 3 * conv_flops(model, x)  # forward + backward (data and weight) ~ 3x forward
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    dt = (time.perf_counter() - t0) / steps
    print(f"pytorch resnet20 train step batch {batch}: {dt*1e3:.1f} ms/step, {batch/dt:.0f} img/s, "
          f"{flops/dt/1e9:.1f} GFLOP/s effective (torch {torch.__version__}, {torch.get_num_threads()} threads)")


def bench_kd(batch=64, steps=10):
    """One RepDistiller KD step: teacher (eval, no_grad) forward, student forward,
    0.1 * CE + 0.9 * KL(T=4) * T^2, backward, SGD."""
    student, teacher = ResNet(20), ResNet(56)
    teacher.eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 100, (batch,))
    T = 4.0

    def step():
        with torch.no_grad():
            zt = teacher(x)
        zs = student(x)
        kd = F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="sum") * T * T / batch
        loss = 0.1 * F.cross_entropy(zs, y) + 0.9 * kd
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(steps):
            teacher(x)
        tf = (time.perf_counter() - t0) / steps
    print(f"pytorch KD step resnet56 -> resnet20 batch {batch}: {dt*1e3:.1f} ms/step, {batch/dt:.0f} img/s; "
          f"teacher forward alone {tf*1e3:.1f} ms (torch {torch.__version__}, {torch.get_num_threads()} threads)")


def bench_conv(batch=64, reps=20):
    for c, hw in [(16, 32), (32, 16), (64, 8)]:
        conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        x = torch.randn(batch, c, hw, hw, requires_grad=True)
        flops = 2 * batch * c * hw * hw * c * 9
        with torch.no_grad():
            for _ in range(3):
                conv(x)
            t0 = time.perf_counter()
            for _ in range(reps):
                conv(x)
            fwd = (time.perf_counter() - t0) / reps
        y = conv(x)
        g = torch.randn_like(y)
        for _ in range(2):
            torch.autograd.grad(y, [x, conv.weight], g, retain_graph=True)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.autograd.grad(y, [x, conv.weight], g, retain_graph=True)
        bwd = (time.perf_counter() - t0) / reps
        print(f"pytorch conv3x3 {c}ch {hw}x{hw} batch {batch}: forward {flops/fwd/1e9:.1f} GFLOP/s, "
              f"backward (data+weight) {2*flops/bwd/1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("all", "step"):
        bench_step()
    if what in ("all", "conv"):
        bench_conv()
    if what in ("all", "kd"):
        bench_kd()
