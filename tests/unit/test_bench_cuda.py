"""make bench-cuda on a box without a GPU says so and measures nothing; its synthetic catalogue
exports to the package's graph with scores equal to the PyTorch model's."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from shared import model_package as pkg
from tests.bench import cuda


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark would measure")
def test_without_a_gpu_it_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["cuda", "--out", str(tmp_path / "cuda.json")])
    cuda.main()
    assert "nothing measured" in capsys.readouterr().out
    assert not (tmp_path / "cuda.json").exists()


def test_synthetic_catalogue_exports_with_the_model_scores(tmp_path):
    path = tmp_path / pkg.MODEL_FILE
    eager, _ = cuda.export_synthetic(500, 7, 50, path)
    feeds = cuda.feeds_for(500, 3, 50, np.random.default_rng(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = session.run([pkg.OUTPUT_SCORES], feeds)[0]
    with torch.no_grad():
        expected = eager(*[torch.from_numpy(feeds[n]) for n in pkg.INPUT_NAMES])[0].numpy()
    assert scores.shape == (3, 500)
    np.testing.assert_allclose(scores, expected, atol=1e-4)
