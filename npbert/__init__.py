"""npbert: BERT-family extractive question answering in numpy, numerically identical to transformers."""

from .config import Config
from .families import FAMILIES
from .model import (
    AlbertForQuestionAnswering,
    AutoModel,
    AutoModelForQuestionAnswering,
    BertForQuestionAnswering,
    DebertaV2ForQuestionAnswering,
    DistilBertForQuestionAnswering,
    DistilBertModel,
    ElectraForQuestionAnswering,
    RobertaForQuestionAnswering,
    XLMRobertaForQuestionAnswering,
)
from .pipeline import QuestionAnsweringPipeline, pipeline
from .tokenizer import Tokenizer

__version__ = "0.1.0"
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
__all__ = [
    "AlbertForQuestionAnswering",
    "AutoModel",
    "AutoModelForQuestionAnswering",
    "BertForQuestionAnswering",
    "Config",
    "DebertaV2ForQuestionAnswering",
    "DistilBertForQuestionAnswering",
    "DistilBertModel",
    "ElectraForQuestionAnswering",
    "QuestionAnsweringPipeline",
    "RobertaForQuestionAnswering",
    "SUPPORTED_MODEL_TYPES",
    "Tokenizer",
    "XLMRobertaForQuestionAnswering",
    "pipeline",
    "__version__",
]
