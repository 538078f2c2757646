"""Writes a tiny VSI-Bench in the hub's layout: parquet annotations with pyarrow (as `datasets`
writes them: snappy, `options` a list of strings or null) and a dataset card naming the
configurations. Usage: make_vsibench.py ROWS.json OUT_DIR"""
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

rows = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
schema = pa.schema([
    ("id", pa.int64()), ("dataset", pa.string()), ("scene_name", pa.string()),
    ("question_type", pa.string()), ("question", pa.string()),
    ("options", pa.list_(pa.string())), ("ground_truth", pa.string()),
])
columns = {name: [r.get(name) for r in rows] for name in schema.names}
pq.write_table(pa.table(columns, schema=schema), out / "test-00000-of-00001.parquet", compression="snappy")
debiased = [r for r in rows if r["id"] % 2 == 0]
columns = {name: [r.get(name) for r in debiased] for name in schema.names}
pq.write_table(pa.table(columns, schema=schema), out / "test_debiased.parquet", compression="zstd")
(out / "README.md").write_text(
    "---\nlicense: apache-2.0\nconfigs:\n- config_name: full\n  data_files:\n  - split: test\n    path: test-*.parquet\n"
    "  default: true\n- config_name: debiased\n  data_files:\n  - split: test\n    path: test_debiased.parquet\n---\n# tiny VSI-Bench\n"
)
