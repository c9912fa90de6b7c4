"""Time SAACL forward+backward: the code at OLD_SNAPSHOT vs NEW_SNAPSHOT (same inputs). Usage: python saacl_cost.py OLD NEW"""
import importlib.util, statistics, sys, time
import torch

def load(snap):
    spec = importlib.util.spec_from_file_location("saacl_" + snap.replace("/", "_"), f"{snap}/nnunet_semicl/losses/saacl.py")
    sys.path.insert(0, snap)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    sys.path.pop(0)
    return m.saacl_loss

old, new = load(sys.argv[1]), load(sys.argv[2])
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
for d in (128, 512):
    n, m, k = 1024, 12288, 4
    a = torch.randn(n, d, generator=g); y = torch.arange(n) % k; v = a + 0.3 * torch.randn(n, d, generator=g)
    q = torch.randn(m, d, generator=g); ql = torch.arange(m) % k; c = torch.randn(k, d, generator=g)
    res = {}
    for name, fn in (("old", old), ("new", new)) * 2:
        ts = []
        for _ in range(8):
            x = a.clone().requires_grad_(True)
            t0 = time.perf_counter(); fn(x, y, v, q, ql, c, tau=0.5).backward(); ts.append(time.perf_counter() - t0)
        res.setdefault(name, []).extend(ts[2:])
    lo = old(a, y, v, q, ql, c, tau=0.5).item(); ln = new(a, y, v, q, ql, c, tau=0.5).item()
    print(f"d={d} n={n} m={m}: old {statistics.median(res['old'])*1e3:.0f} ms, new {statistics.median(res['new'])*1e3:.0f} ms "
          f"(forward+backward, median of {len(res['old'])}); loss old {lo:.6f} new {ln:.6f}")
