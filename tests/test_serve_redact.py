"""Server paths never reach a client: uploaded files are named by their ids, runs by their job ids, anything
else under the data dir by its place in it."""

from __future__ import annotations

from honing.serve.redact import Redactor
from honing.serve.settings import Settings


def test_server_paths_become_ids(tmp_path):
    s = Settings(data_dir=tmp_path / "srv data")
    r = Redactor(s)
    files, runs = s.files_dir, s.runs_dir
    said = (f"train data: {files}/file-0a1b2c.jsonl (100 examples), eval {files}/file-ffee.csv; result in "
            f"{runs}/ftjob-12ab/final; production run {runs}/ftjob-9/ was named; copy {s.checkpoints_dir}/ftjob-1/"
            f"step-3.safetensors; drift in {s.data_dir}/retraining/rtpol-1/check-2; root {s.data_dir}")
    assert r.text(said) == ("train data: file-0a1b2c (100 examples), eval file-ffee; result in ftjob-12ab/final; "
                            "production run ftjob-9/ was named; copy ftjob-1/step-3.safetensors; drift in "
                            "retraining/rtpol-1/check-2; root DATA_DIR")
    report = {"path": f"{files}/file-77.jsonl", "problems": [{"message": f"see {runs}/ftjob-1/run.json"}], "n": 3}
    assert r.data(report) == {"path": "file-77", "problems": [{"message": "see ftjob-1/run.json"}], "n": 3}
    # Paths elsewhere (a catalog name, a user's own words) are left as they are.
    other = "smollm2-135m-instruct /home/me/notes.txt " + str(tmp_path / "srv data2")
    assert r.text(other) == other
