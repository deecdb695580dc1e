"""notebooks/quickstart.ipynb runs headlessly, top to bottom, and shows the videos."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, final_shape, base_shape",
    [
        # The tiny random cascade: the same code, fast (the kernel inherits conftest's flags).
        ("tiny", "uint8 (2, 4, 8, 8, 3)", "base  (2, 2, 8, 8, 3)"),
        # The bundled demo cascade, as a user gets it (its first three mini stages).
        ("bundled", "uint8 (2, 8, 32, 32, 3)", "base  (2, 4, 16, 16, 3)"),
    ],
)
def test_quickstart_notebook_runs_and_shows_the_videos(monkeypatch, mode, final_shape, base_shape):
    if mode == "tiny":
        monkeypatch.setenv("IMAGEN_VIDEO_QUICKSTART", "tiny")
    else:
        monkeypatch.delenv("IMAGEN_VIDEO_QUICKSTART", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()

    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert final_shape in text
    assert base_shape in text
    html = "".join(o.data.get("text/html", "") for o in outputs if "data" in o)
    assert html.count("data:image/gif;base64,") == 2
    assert any("image/png" in o.data for o in outputs if "data" in o)
