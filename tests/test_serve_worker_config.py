"""The run directory is the one contract between the service and training: the worker writes a job's whole
configuration once into RUN/config.yaml and starts `hone train RUN/config.yaml --resume`; nothing travels as
`--set key=<str>` (parsed again as YAML in the child, where "null" became None and "on" True)."""

from __future__ import annotations

import time

import pytest

from honing.config import TrainConfig, build_config, parse_override
from honing.rundir import CONFIG_FILE
from honing.serve.db import File, Job, make_engine, sessions, upgrade
from honing.serve.settings import Settings
from honing.serve.worker import Worker

# Strings that YAML 1.1 reads as another type when written bare (the old `--set k=<str(v)>` encoding).
RETYPED = {"null": None, "on": True, "off": False, "yes": True, "~": None, "1.5": 1.5, "0x10": 16}


@pytest.fixture
def worker(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", job_set=("save_every=7",))
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    yield Worker(settings, sessions(engine))
    engine.dispose()


def _job(worker, config: dict, *, validation: bool = True) -> Job:
    files = worker.settings.files_dir
    files.mkdir(parents=True, exist_ok=True)
    job = Job(id="ftjob-test", project="p", model="smollm2-135m-instruct", training_file="file-t",
              validation_file="file-v" if validation else None, status="running", method={"type": "supervised"},
              config=config, seed=3, result_files=[], run_dir=str(worker.settings.runs_dir / "ftjob-test"),
              created_at=0, enqueued_at=time.time(), attempts=1, model_deleted=False)
    with worker.Session.begin() as s:
        for fid in ("file-t", "file-v"):
            s.add(File(id=fid, project="p", filename=f"{fid}.jsonl", purpose="fine-tune", bytes=1, sha256="0",
                       path=str(files / f"{fid}.jsonl"), created_at=0))
        s.add(job)
    return job


def test_the_worker_writes_the_configuration_once_and_trains_from_it(worker):
    config = {"seed": 3, "epochs": 2, "batch_size": "auto", "learning_rate": 1.5e-05, "max_grad_norm": None,
              "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}, "packing": False,
              "gate": {"margin": -0.5, "baselines": ["zero-shot"], "forgetting": False}}
    job = _job(worker, config)
    args = worker.command(job)
    path = worker.settings.runs_dir / job.id / CONFIG_FILE
    assert args[3:] == ["train", str(path), "--resume", "--eval-baselines",
                        worker.settings.eval_baselines]
    read = build_config(path)  # what `hone train RUN/config.yaml` validates
    assert read == worker.train_config(job)
    assert read.max_grad_norm is None and read.learning_rate == 1.5e-05 and read.lora.r == 4
    assert read.gate.margin == -0.5 and read.gate.baselines == ["zero-shot"]
    assert read.data == str(worker.settings.files_dir / "file-t.jsonl")
    assert read.eval_data == str(worker.settings.files_dir / "file-v.jsonl")
    assert read.out == job.run_dir and read.model == "smollm2-135m-instruct"
    assert read.save_every == 7  # the operator's `hone worker --set` on top
    assert read.tensorboard is False

    # Written once: a later attempt (resume) trains with the same file, even if the operator's --set changed.
    worker.settings.job_set = ("save_every=9",)
    before = path.read_text()
    worker.command(job)
    assert path.read_text() == before and build_config(path).save_every == 7


def test_strings_that_yaml_would_retype_survive(worker):
    """Every string value reaches training as the same string. The old encoding changed their types."""
    for text, retyped in RETYPED.items():
        _key, value = parse_override(f"data_format={text}")  # the old worker's `--set data_format=<str>`
        assert value == retyped and value != text, text  # the bug this replaces: the child read another value
    job = _job(worker, {}, validation=False)
    path = worker.settings.runs_dir / job.id / CONFIG_FILE
    for i, text in enumerate(RETYPED):
        job.config = {"seed": i, "data_format": text}
        path.unlink(missing_ok=True)
        worker.command(job)
        read = build_config(path)
        assert read.data_format == text and read.seed == i


def test_a_configuration_the_operator_set_breaks_fails_the_job_with_the_key(worker):
    job = _job(worker, {"seed": 1})
    worker.settings.job_set = ("lora.r=zero",)
    with worker.Session.begin() as s:
        s.get(Job, job.id).worker_id = worker.id
    job.worker_id = worker.id
    worker.run(job)
    with worker.Session() as s:
        row = s.get(Job, job.id)
    assert row.status == "failed" and row.error["code"] == "invalid_configuration"
    assert "lora.r" in row.error["message"]
    assert not (worker.settings.runs_dir / job.id / CONFIG_FILE).exists()


def test_the_resolved_configuration_round_trips_through_its_file(tmp_path):
    """Every key of a default configuration (all types: literals, auto, None, nested sections) reads back."""
    from honing.config import save_recipe

    config = TrainConfig.model_validate({"data": "on", "out": "null", "eval_data": "1.5"})
    path = save_recipe(config, tmp_path / CONFIG_FILE)
    assert build_config(path) == config
