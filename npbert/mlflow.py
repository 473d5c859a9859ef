"""An npbert checkpoint as an MLflow model (the `mlflow` extra): a custom pyfunc model, which
`mlflow.pyfunc.load_model`, `mlflow models serve` and the platforms that deploy MLflow models load.

Follows MLflow's "custom Python model" format (`mlflow.pyfunc.PythonModel`, `mlflow.pyfunc.save_model` /
`log_model` with `python_model`, `artifacts`, `code_paths`, a signature and an input example) and answers as
MLflow's transformers flavor answered question answering before transformers 5.3 removed the pipeline (mlflow
PR #21426): one answer string per question/context row.

    import mlflow, npbert.mlflow
    npbert.mlflow.save_model("path/to/checkpoint", "qa-model")      # a folder MLflow loads and serves
    npbert.mlflow.log_model("path/to/checkpoint", name="qa")        # into the active run (mlflow.start_run())
    model = mlflow.pyfunc.load_model("qa-model")
    model.predict({"question": "What's my name?", "context": "My name is John and I live in Seattle"})
    # ['John']   (a DataFrame with question and context columns: one answer per row)

    $ mlflow models serve -m qa-model --env-manager local --host 127.0.0.1 --port 5000
    $ curl -d '{"inputs": {"question": "...", "context": "..."}}' -H 'Content-Type: application/json' \\
          127.0.0.1:5000/invocations                                 # {"predictions": ["John"]}

The model folder holds the checkpoint (artifacts/checkpoint) and a copy of the npbert package (code/npbert),
so it loads where npbert is not installed; its requirements are npbert's own (read from the installed
package's metadata), with the sentencepiece extra's when the checkpoint's tokenizer needs it.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from . import hub
from .pipeline import pipeline

COLUMNS = ("question", "context")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", name) for name in COLUMNS]), outputs=Schema([ColSpec("string")])
)
# The model catalog's sample request for its question-answering models.
INPUT_EXAMPLE = {"question": "What's my name?", "context": "My name is John and I live in Seattle"}
# Files a checkpoint's tokenizer needs the sentencepiece extra for (when it has no tokenizer.json).
_SENTENCEPIECE_FILES = ("sentencepiece.bpe.model", "spiece.model", "spm.model")


class QuestionAnsweringModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: `npbert.pipeline` on the checkpoint artifact; `predict` answers each row."""

    def load_context(self, context):
        self.pipeline = pipeline(model=context.artifacts["checkpoint"], local_files_only=True)

    def predict(self, context, model_input: pd.DataFrame, params=None):
        questions, contexts = _rows(model_input)
        if not questions:
            return []
        try:
            answers = self.pipeline(question=questions, context=contexts)
        except ValueError as e:  # bad input: a 400 from the scoring server, naming what was wrong
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return [a["answer"] for a in (answers if isinstance(answers, list) else [answers])]


def _rows(model_input) -> tuple[list, list]:
    """(questions, contexts) from a DataFrame with question and context columns (what MLflow passes after
    applying the signature), or a dict / list of dicts of them."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(
            [model_input] if all(not isinstance(v, list) for v in model_input.values()) else model_input
        )
    elif isinstance(model_input, list):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        raise MlflowException(
            f"expected a DataFrame or a dict with columns {COLUMNS}, found {type(model_input).__name__}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    missing = [c for c in COLUMNS if c not in model_input.columns]
    if missing:
        raise MlflowException(
            f"the input has no {' or '.join(missing)} column (expected columns {COLUMNS})",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return model_input["question"].tolist(), model_input["context"].tolist()


def _model_arguments(checkpoint, revision, local_files_only, work: Path) -> dict:
    """What save_model and log_model pass to mlflow.pyfunc: the model class, the checkpoint artifact, the
    npbert code, requirements, signature and input example."""
    folder = Path(hub.resolve(checkpoint, revision, local_files_only))
    pipeline(model=folder, local_files_only=True)  # a checkpoint that does not load fails here, not when deployed
    code = work / "npbert"
    shutil.copytree(
        Path(__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    )
    return dict(
        python_model=QuestionAnsweringModel(),
        artifacts={"checkpoint": str(folder)},
        code_paths=[str(code)],
        pip_requirements=_requirements(folder),
        signature=SIGNATURE,
        input_example=INPUT_EXAMPLE,
    )


def _requirements(folder: Path) -> list[str]:
    """npbert's own requirements (its installed metadata), the sentencepiece extra's when the checkpoint needs
    it, pandas and MLflow itself (the version saving the model)."""
    requires = metadata.requires("npbert") or []
    needs_sentencepiece = not (folder / "tokenizer.json").is_file() and any(
        (folder / f).is_file() for f in _SENTENCEPIECE_FILES
    )
    wanted = [r for r in requires if "extra ==" not in r]
    if needs_sentencepiece:
        wanted += [r.split(";")[0].strip() for r in requires if 'extra == "sentencepiece"' in r]
    return [*wanted, f"pandas=={pd.__version__}", f"mlflow-skinny=={mlflow.__version__}"]


def save_model(
    checkpoint: str | Path, path: str | Path, revision: str | None = None, local_files_only: bool = False, **kwargs
) -> None:
    """Save `checkpoint` (a folder or hub repository id) as an MLflow model in the new folder `path`.
    `kwargs` go to `mlflow.pyfunc.save_model` (e.g. `metadata`)."""
    with tempfile.TemporaryDirectory() as work:
        mlflow.pyfunc.save_model(
            str(path), **_model_arguments(checkpoint, revision, local_files_only, Path(work)), **kwargs
        )


def log_model(
    checkpoint: str | Path, name: str = "model", revision: str | None = None, local_files_only: bool = False, **kwargs
):
    """Log `checkpoint` as an MLflow model named `name` in the active run (one is started when none is);
    returns MLflow's ModelInfo (its `model_uri` loads it). `kwargs` go to `mlflow.pyfunc.log_model` (e.g.
    `registered_model_name`)."""
    with tempfile.TemporaryDirectory() as work:
        return mlflow.pyfunc.log_model(
            name=name, **_model_arguments(checkpoint, revision, local_files_only, Path(work)), **kwargs
        )
