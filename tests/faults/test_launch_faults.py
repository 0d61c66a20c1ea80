"""Launch mistakes: a trainer started as one of several srun/MPI tasks without ranks stops (exit 2)
instead of becoming N one-rank runs that all write the same --out."""

from __future__ import annotations

import pytest

from tests.faults.faults_helpers import assert_clean_error, cli_env, run_cli


@pytest.mark.parametrize("var", ["SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"])
def test_several_tasks_without_rank_stop_before_anything_is_written(tmp_path, var):
    env = cli_env(**{var: "4"})
    env.pop("RANK", None)
    out = tmp_path / "run"
    p = run_cli(["trainer/run.py", "--config", "configs/tiny.yaml", "--out", str(out)], env=env)
    assert_clean_error(p, f"one of 4 tasks ({var})", "one deepspeed launcher per node", code=2)
    assert not out.exists()
