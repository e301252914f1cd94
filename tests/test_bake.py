"""BAKE: the ensemble Q in closed form and against a linear solve, the loss by hand in both forms, the class-group
sampler and the global ensemble of a real two-process run."""
import math

import pytest
import torch

from hand import batch as _batch
from hand import ce as _ce
from hand import kd_probs as _kl_probs
from hand import softmax as _softmax
from selfkd import create_model
from selfkd.data.pipeline import train_sampler
from selfkd.methods import DataNeeds, create_method
from selfkd.methods.bake import ensemble_targets

K = 5  # classes in the hand-computed examples


def _matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def _bake_q(embeddings, logits, t, omega):
    """Q = (1−ω) Σ_k ω^k A^k P (the Neumann series of (1−ω)(I−ωA)⁻¹P), in plain Python."""
    h = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in embeddings.tolist()]
    n = len(h)
    a = []
    for i in range(n):
        sims = [math.exp(sum(x * y for x, y in zip(h[i], h[j]))) if j != i else 0.0 for j in range(n)]
        a.append([s / sum(sims) for s in sims])
    term = [_softmax(r, t) for r in logits.tolist()]
    q = [[(1 - omega) * v for v in row] for row in term]
    for _ in range(1, 200):
        term = [[omega * v for v in row] for row in _matmul(a, term)]
        q = [[x + (1 - omega) * y for x, y in zip(qr, tr)] for qr, tr in zip(q, term)]
    return q


def test_bake_q_closed_form_on_three_samples():
    h = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.0, 5.0]])  # norms differ: only directions count
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [-1.0, 0.0, 3.0]])
    q = ensemble_targets(h, z, temperature=4.0, omega=0.5)
    expected = _bake_q(h, z, 4.0, 0.5)
    for row, exp in zip(q.tolist(), expected):
        assert row == pytest.approx(exp, rel=1e-5)
    assert q.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-6)
    assert not ensemble_targets(h.requires_grad_(), z.requires_grad_(), 4.0, 0.5).requires_grad


def test_bake_q_equals_the_linear_solve_for_large_omega():
    torch.manual_seed(0)
    h, z = torch.randn(64, 16), 3 * torch.randn(64, 10)
    hn = torch.nn.functional.normalize(h, dim=1)
    a = torch.softmax(hn @ hn.T - 1e9 * torch.eye(64), dim=1)
    p = torch.softmax(z / 4.0, dim=1)
    solved = 0.1 * torch.linalg.solve(torch.eye(64, dtype=torch.float64) - 0.9 * a.double(), p.double())
    assert torch.allclose(ensemble_targets(h, z, temperature=4.0, omega=0.9).double(), solved, atol=1e-6)


@pytest.mark.parametrize("compat", ["official", "selfkdlib"])
def test_bake_loss_by_hand(tiny_resnet, compat):
    model = tiny_resnet(num_classes=K)
    method = create_method("bake", model, num_classes=K, compat=compat)
    x, y = _batch(n=8)
    out = method(x, y)
    with torch.no_grad():
        z, feats = model(x)
        q = _bake_q(feats[-1].mean(dim=(2, 3)), z, 4.0, 0.5)
    if compat == "selfkdlib":  # SKL's double softmax: σ(Q/T) is the target
        q = [_softmax(row, 4.0) for row in q]
    assert out.losses["ce"].item() == pytest.approx(_ce(z, y), rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(_kl_probs(q, z.tolist(), 4.0), rel=1e-4, abs=1e-5)
    assert out.logits.shape == (8, K) and method.extra_parameters() == 0


def test_bake_sampler_matches_the_spec():
    model = create_model("cifar_resnet18", num_classes=10, width=8)
    needs = create_method("bake", model, num_classes=10).data_needs
    assert needs == DataNeeds(class_partners=3, partners_in_batch=True, partners_replace=False, exclude_self=True)
    labels = torch.arange(400) % 10  # 40 images per class
    sampler = train_sampler(labels, 128, needs, seed=0, rank=0, world=1)
    assert len(sampler) == math.ceil(400 / 32)
    batch = next(iter(sampler))
    anchors, partners = batch[:32], batch[32:].view(3, 32)
    assert len(batch) == 128
    assert (labels[partners] == labels[anchors]).all()
    assert (partners != anchors).all()
    assert all(len(set(partners[:, i].tolist())) == 3 for i in range(32))  # without replacement

    skl = create_method("bake", model, num_classes=10, compat="selfkdlib").data_needs
    assert len(next(iter(train_sampler(labels, 128, skl, 0, 0, 1)))) == 512  # SKL: 128 anchors + 384 partners


def _bake_rank(rank: int, world: int, folder: str):
    """One rank of a real two-process gloo world on the CPU: BAKE's KD term on this rank's share of 7 images
    (rank 0 holds 3, rank 1 holds 4), with the global ensemble and with the local one."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = create_model("cifar_resnet18", num_classes=K, width=8)  # the same weights on both ranks
        x, y = _batch(n=7)
        share = slice(0, 3) if rank == 0 else slice(3, 7)
        kd = {ke: create_method("bake", model, num_classes=K, global_ke=ke)(x[share], y[share]).losses["kd"].item()
              for ke in (True, False)}
        torch.save(kd, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_bake_global_ensemble_keeps_this_ranks_rows(tmp_path):
    torch.multiprocessing.spawn(_bake_rank, args=(2, str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    model = create_model("cifar_resnet18", num_classes=K, width=8)
    x, _ = _batch(n=7)
    with torch.no_grad():  # each rank's forward, in train mode (BN statistics of its own share)
        outputs = [model(x[share]) for share in (slice(0, 3), slice(3, 7))]
    h = [feats[-1].mean(dim=(2, 3)) for _, feats in outputs]
    z = [logits for logits, _ in outputs]
    q = _bake_q(torch.cat(h), torch.cat(z), 4.0, 0.5)  # ensembled over the global batch of 7
    for rank, rows in enumerate((q[:3], q[3:])):
        kd = torch.load(tmp_path / f"rank{rank}.pt")
        assert kd[True] == pytest.approx(_kl_probs(rows, z[rank].tolist(), 4.0), rel=1e-4, abs=1e-5)
        local = _bake_q(h[rank], z[rank], 4.0, 0.5)  # global_ke=False: this rank's batch alone
        assert kd[False] == pytest.approx(_kl_probs(local, z[rank].tolist(), 4.0), rel=1e-4, abs=1e-5)
        assert kd[True] != pytest.approx(kd[False], rel=1e-3)  # the other rank's samples changed the targets
