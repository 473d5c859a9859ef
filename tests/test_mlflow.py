"""npbert.mlflow (the mlflow extra): a checkpoint saved and logged as an MLflow pyfunc model answers as
`npbert.pipeline` does, through `mlflow.pyfunc.load_model(...).predict` and through a real
`mlflow models serve --env-manager local` process on loopback, in MLflow's `inputs` and `dataframe_split`
request forms, with the model catalog's sample request."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

mlflow = pytest.importorskip("mlflow", reason="mlflow (the mlflow extra) is not installed")
pd = pytest.importorskip("pandas", reason="pandas (the mlflow extra) is not installed")

import npbert  # noqa: E402
import npbert.mlflow as npbert_mlflow  # noqa: E402

SAMPLE = {"question": "What's my name?", "context": "My name is John and I live in Seattle"}  # the catalog's
MORE = [
    SAMPLE,
    {"question": "Where do I live?", "context": SAMPLE["context"]},
    {"question": "Who won?", "context": "The Denver Broncos defeated the Carolina Panthers 24 to 10."},
]
SERVER_START_S = 180  # the server loads the model (numba's kernels come from the cache) before answering /ping


@pytest.fixture(scope="module")
def saved(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow") / "qa-model"
    npbert_mlflow.save_model(tiny_checkpoint, path)
    return path


@pytest.fixture(scope="module")
def expected(tiny_checkpoint):
    """The pipeline's answers for MORE (the reference the MLflow model must equal)."""
    qa = npbert.pipeline(model=tiny_checkpoint)
    return [qa(**item)["answer"] for item in MORE]


def test_saved_model_has_signature_input_example_and_requirements(saved):
    info = mlflow.models.get_model_info(str(saved))
    assert [(c["name"], c["type"]) for c in json.loads(info.signature.inputs.to_json())] == [
        ("question", "string"),
        ("context", "string"),
    ]
    assert json.loads((saved / "input_example.json").read_text()) == SAMPLE
    requirements = (saved / "requirements.txt").read_text().split()
    assert any(r.startswith("numba") for r in requirements) and any(r.startswith("pandas") for r in requirements)
    assert (saved / "code" / "npbert" / "pipeline.py").is_file()  # loads where npbert is not installed
    assert not list((saved / "code").rglob("__pycache__"))


def test_load_model_predicts_as_the_pipeline(saved, expected):
    model = mlflow.pyfunc.load_model(str(saved))
    assert model.predict(SAMPLE) == expected[:1]
    assert model.predict(pd.DataFrame(MORE)) == expected
    assert model.predict(pd.DataFrame(MORE[1:2])) == expected[1:2]
    assert (
        model.predict({"question": [m["question"] for m in MORE], "context": [m["context"] for m in MORE]}) == expected
    )
    assert model.predict(MORE) == expected  # a list of records
    with pytest.raises(mlflow.exceptions.MlflowException, match="context"):
        model.predict({"question": "Where?"})
    with pytest.raises(mlflow.exceptions.MlflowException, match="question` cannot be empty"):
        model.predict({"question": "", "context": "abc"})


def test_log_model_into_a_run_and_load_it_back(tiny_checkpoint, tmp_path, expected, monkeypatch):
    # a local file store (mlflow-skinny has no SQL store; MLflow 3 asks to opt in to the file store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run():
            info = npbert_mlflow.log_model(tiny_checkpoint, name="qa")
        assert mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame(MORE)) == expected
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize(
    "name, data, message",
    [("tokenizer.json", b"{oops", "tokenizer.json: cannot be loaded"), ("config.json", b"{oops", "config.json")],
)
def test_a_checkpoint_that_does_not_load_is_refused_when_saved(tiny_checkpoint, tmp_path, name, data, message):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / name).write_bytes(data)
    with pytest.raises(ValueError, match=message) as error:
        npbert_mlflow.save_model(broken, tmp_path / "model")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "model").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, obj=None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        body = None if obj is None else json.dumps(obj).encode()
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data.strip() else None)
    finally:
        conn.close()


def test_mlflow_models_serve_answers_the_catalog_sample(saved, expected, tmp_path):
    """`mlflow models serve -m PATH --env-manager local` in its own process group on a free loopback port;
    the group is stopped (SIGTERM, then SIGKILL) whatever happens."""
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                str(saved),
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, f"mlflow models serve ended (exit {proc.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not answering /ping after {SERVER_START_S} s:\n{log.read_text()}"
            try:
                if _request(port, "GET", "/ping")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert _request(port, "POST", "/invocations", {"inputs": SAMPLE}) == (200, {"predictions": expected[:1]})
        assert _request(port, "POST", "/invocations", {"inputs": MORE}) == (200, {"predictions": expected})
        split = {
            "dataframe_split": {
                "columns": ["question", "context"],
                "data": [[item["question"], item["context"]] for item in MORE],
            }
        }
        assert _request(port, "POST", "/invocations", split) == (200, {"predictions": expected})
        status, body = _request(port, "POST", "/invocations", {"inputs": {"question": "Where?"}})
        assert status == 400 and "context" in body["message"]
        status, body = _request(port, "POST", "/invocations", {"inputs": {"question": "", "context": "abc"}})
        assert status == 400 and "`question` cannot be empty" in body["message"]
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
