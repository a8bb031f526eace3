"""observe shows a run's parameters and each pipeline's state, with who set each key."""

from __future__ import annotations

import json
from pathlib import Path

from pipeloom import Context, Pipeline
from tests.observe._observe_support import rows, started


async def test_observe_shows_parameters_and_state(tmp_path: Path) -> None:
    db = tmp_path / "daily.db"
    pipe = Pipeline("daily", db=db, workers=1, params={"limit": 3})

    @pipe.task
    def load(ctx: Context, item: str) -> None:
        ctx.state.set(f"{item}.last_id", 41 + ctx.params["limit"])

    pipe.map(load, ["orders"])
    result = pipe.run(progress=False, params={"limit": 7})
    assert result.ok
    ds = await started(db)
    (run,) = await rows(ds, "/daily/pipeline_runs.json?_shape=array")
    assert json.loads(run["params"]) == {"limit": 7}
    state = await rows(ds, "/daily/pipeloom_state.json?_shape=array")
    assert [(s["pipeline"], s["key"], s["value"], s["run_id"], s["task_key"]) for s in state] == [
        ("daily", "orders.last_id", "48", result.run_id, "load:orders")
    ]
    page = await ds.client.get("/daily/pipeloom_state")
    assert page.status_code == 200 and "incremental state" in page.text
