"""0-d tensors (issue 12, item 2): a 0-d parameter such as CLIP's ``logit_scale`` used by an
element-wise op exports, folds and runs, with and without the optimisation passes."""
from __future__ import annotations

import pytest

from conftest import export_and_compare

torch = pytest.importorskip("torch", reason="needs torch (pip install 'nac[export]')")


class LogitScale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.6592))
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) * self.logit_scale.exp(), self.logit_scale * 2


@pytest.mark.parametrize("optimize_graph", [True, False])
def test_zero_dim_parameter(tmp_path, optimize_graph):
    import nac

    torch.manual_seed(0)
    m = LogitScale().eval()
    x = torch.randn(2, 4)
    path = nac.export(m, (x,), tmp_path / "m.nac", optimize_graph=optimize_graph)
    got = nac.load(path).run([x.numpy()])
    with torch.no_grad():
        want = m(x)
    assert got[1].shape == () and abs(float(got[1]) - float(want[1])) < 1e-6
    assert abs(got[0] - want[0].numpy()).max() < 1e-5
    export_and_compare(m, (x,), tmp_path, name="again.nac")
