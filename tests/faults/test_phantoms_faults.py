"""`python -m trainer.phantoms` with bad arguments: a clean message, exit 2, nothing written."""

from __future__ import annotations

from tests.faults.faults_helpers import assert_clean_error, run_cli


def test_phantoms_out_naming_a_file_and_unknown_domain(tmp_path):
    f = tmp_path / "not_a_folder"
    f.write_text("keep me")
    p = run_cli(["-m", "trainer.phantoms", "--out", str(f), "--per-domain", "1", "--size", "16"])
    assert_clean_error(p, str(f), "is a file, not a folder", code=2)
    assert f.read_text() == "keep me"
    p = run_cli(["-m", "trainer.phantoms", "--out", str(tmp_path / "d"), "--domains", "ct_brainz"])
    assert_clean_error(p, "--domains", "ct_brainz", code=2)
    assert not (tmp_path / "d").exists()
