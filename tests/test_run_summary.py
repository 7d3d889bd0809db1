"""summary.json is valid JSON whatever the numbers; the report prints when no step ran."""

from __future__ import annotations

import json
import math

from manifold_align_train.run_summary import _loss_text, write_json


def test_summary_json_is_valid_with_nan_and_inf(tmp_path):
    path = tmp_path / "summary.json"
    write_json({"final_loss": math.nan, "final_metrics": {"gap": math.inf}, "rows": [1.0, -math.inf]}, path)
    loaded = json.loads(path.read_text(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert loaded == {"final_loss": "nan", "final_metrics": {"gap": "inf"}, "rows": [1.0, "-inf"]}


def test_report_loss_when_no_step_ran():
    assert _loss_text(None).startswith("n/a")
    assert _loss_text(3.14159) == "3.1416"
