"""Documents of the BMW tasks, taken from the project itself (bmwlm.harness), so the harness scores
exactly the items that 05_evaluate.py scores."""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bmwlm import harness  # noqa: E402


def load_qa(**kwargs):
    return harness.as_dataset(harness.qa_docs())


def load_cloze(**kwargs):
    return harness.as_dataset(harness.cloze_docs())
