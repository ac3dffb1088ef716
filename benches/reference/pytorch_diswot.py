"""DisWOT candidates per second in PyTorch on this machine's CPU (2 threads), the workload of
`cargo bench --bench score`: teacher resnet56 cached once (features + classifier gradient), then
per candidate: build + initialise the student, one train-mode forward under no_grad, the
closed-form classifier gradient (softmax error x pooled features / B), ICKD and SP. Batch 64,
100 classes. Not part of the build or tests.

    python3 benches/reference/pytorch_diswot.py
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures"))
from pytorch_reference import ResNet  # noqa: E402
from nb201_vit_reference import TinyNetwork  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
B, K = 64, 100
NB201_OPS = ["nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3"]


def features(net, x):
    """(final map, pooled, logits) with train-mode BN, as DisWOT scores."""
    if isinstance(net, ResNet):
        h = F.relu(net.bn1(net.conv1(x)))
        m = net.layer3(net.layer2(net.layer1(h)))
        pooled = F.adaptive_avg_pool2d(m, 1).flatten(1)
        return m, pooled, net.fc(pooled)
    h = net.stem(x)
    for cell in net.cells:
        h = cell(h)
    m = net.lastact(h)
    pooled = net.global_pooling(m).flatten(1)
    return m, pooled, net.classifier(pooled)


def fc_grad(pooled, logits, y):
    err = logits.softmax(1) - F.one_hot(y, K).float()
    return err.t() @ pooled / pooled.shape[0]


def ickd(gs, gt):
    k, c = gs.shape
    es = F.normalize(torch.bmm(gs.view(k, c, 1), gs.view(k, 1, c)), dim=2)
    et = F.normalize(torch.bmm(gt.view(k, c, 1), gt.view(k, 1, c)), dim=2)
    return ((es - et) ** 2).sum() / (c * k)


def sp(fs, ft):
    b = fs.shape[0]
    gs = F.normalize(fs.view(b, -1) @ fs.view(b, -1).t())
    gt = F.normalize(ft.view(b, -1) @ ft.view(b, -1).t())
    return ((gt - gs) ** 2).sum() / (b * b)


def main():
    x = torch.randn(B, 3, 32, 32)
    y = torch.randint(0, K, (B,))
    with torch.no_grad():
        teacher = ResNet(56, K).train()
        tm, tp, tl = features(teacher, x)
        tg = fc_grad(tp, tl, y)
    for label, make in [("resnet20", lambda: ResNet(20, K)), ("nb201_cell", lambda: TinyNetwork(NB201_OPS, 16, 5, K))]:
        times = []
        for rep in range(8):
            t0 = time.perf_counter()
            net = make().train()
            with torch.no_grad():
                m, p, logits = features(net, x)
                score = -(ickd(fc_grad(p, logits, y), tg) + sp(m, tm))
            times.append(time.perf_counter() - t0)
        times = sorted(times[1:])
        print(f"pytorch {torch.__version__} diswot {label}: best {times[0]*1e3:.1f} ms, median "
              f"{times[len(times)//2]*1e3:.1f} ms per candidate ({1/times[len(times)//2]:.2f} candidates/s); "
              f"score {score.item():.4f}")


if __name__ == "__main__":
    main()
