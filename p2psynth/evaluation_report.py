"""``p2psynth evaluate``: quality of a synthetic file against a real file.

Both files are encoded with the same schema (with the policies the schema
sets, so values outside it are reported as for any load) and compared on
integer codes by ``p2psynth.evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path

from p2psynth.evaluate import write_report


def evaluate_files(
    real_path: Path,
    synthetic_path: Path,
    *,
    schema_path: Path,
    target: str | None,
    out_dir: Path,
    seed: int = 0,
    real_skip_rows: int = 0,
) -> str:
    """Write a report folder comparing the two files; return a short text summary."""
    from p2psynth.encoding import encode_file
    from p2psynth.schema import load_schema

    schema = load_schema(schema_path)
    if target is not None:
        schema.column(target)  # raises SchemaError naming the columns
    real = encode_file(real_path, schema, skip_rows=real_skip_rows)
    synthetic = encode_file(synthetic_path, schema)
    report = write_report(
        out_dir,
        real.codes,
        synthetic.codes,
        schema.domain,
        target=target,
        seed=seed,
        extra={"real rows": len(real.codes), "synthetic rows": len(synthetic.codes)},
    )
    metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
    lines = [f"report written to {report}"]
    for way in ("1-way", "2-way", "3-way"):
        if way in metrics.get("tvd", {}):
            values = metrics["tvd"][way]
            lines.append(f"  {way} TVD: mean {values['mean']:.4f}, max {values['max']:.4f}")
    if metrics.get("ml_efficacy"):
        ml = metrics["ml_efficacy"]
        lines.append(f"  ML efficacy for {ml['target']}: AUC {ml['auc']:.4f}, accuracy {ml['accuracy']:.4f}")
    return "\n".join(lines)
