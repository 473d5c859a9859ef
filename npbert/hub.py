"""Where checkpoint files come from: a local folder, or the Hugging Face hub through huggingface-hub.

This is the only module that touches the network or the hub cache. Revision, cache location
(`HF_HOME`, `HF_HUB_CACHE`), offline mode (`HF_HUB_OFFLINE`) and `local_files_only` behave exactly as
huggingface-hub defines them, because huggingface-hub does the work.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DEFAULT_MODEL = "distilbert/distilbert-base-cased-distilled-squad"

# Everything npbert reads from a checkpoint, and nothing else: never the pickled pytorch_model.bin,
# never the TF/Flax/ONNX exports that the real repository also carries.
CHECKPOINT_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    # the vocabulary a family ships when tokenizer.json is absent (npbert/tokenizer.py)
    "vocab.txt",  # WordPiece: DistilBERT, BERT, ELECTRA
    "vocab.json",  # byte-level BPE: RoBERTa
    "merges.txt",
    "sentencepiece.bpe.model",  # SentencePiece: XLM-RoBERTa
    "spiece.model",  # ALBERT
    "spm.model",  # DeBERTa-v2/v3
]


class CheckpointNotFound(OSError):
    """Neither a local folder nor a repository that could be fetched or found in the cache."""


def resolve(path_or_repo_id: str | Path, revision: str | None = None, local_files_only: bool = False) -> Path:
    """Return a local folder holding the checkpoint's files, downloading them if needed."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"{path} is a local folder: a revision ({revision!r}) applies only to hub repositories")
        return path
    repo_id = str(path_or_repo_id)
    if path.exists() or repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise CheckpointNotFound(f"{repo_id}: not a checkpoint folder and not a hub repository id")
    return Path(_snapshot_download(repo_id, revision, local_files_only))


def _snapshot_download(repo_id: str, revision: str | None, local_files_only: bool) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return snapshot_download(
            repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES, local_files_only=local_files_only
        )
    except LocalEntryNotFoundError:
        if local_files_only:
            where = "local_files_only=True"
        elif constants.HF_HUB_OFFLINE:
            where = "HF_HUB_OFFLINE is set"
        else:
            where = f"the hub at {constants.ENDPOINT} could not be reached"
        raise CheckpointNotFound(
            f"{repo_id} (revision {revision or 'main'}) is not in the cache at {constants.HF_HUB_CACHE} and cannot "
            f"be downloaded ({where}). Run once with network access to cache it, point HF_HOME/HF_HUB_CACHE at a "
            f"cache that holds it, or pass a local checkpoint folder."
        ) from None
    except RevisionNotFoundError:
        raise CheckpointNotFound(f"{repo_id}: revision {revision!r} not found on the hub") from None
    except GatedRepoError:
        raise CheckpointNotFound(f"{repo_id}: gated repository; log in with `hf auth login` first") from None
    except RepositoryNotFoundError:
        raise CheckpointNotFound(
            f"{repo_id}: no such repository on the hub (or it is private), and no such local folder"
        ) from None


def snapshot_commit(folder: str | Path) -> str | None:
    """The commit hash of a folder that is a snapshot in a huggingface-hub cache, else None."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.name
    return None


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks: how a checkpoint's files are identified in reports."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
