"""npbert: DistilBERT question answering in numpy, numerically identical to transformers."""

from .config import Config
from .model import DistilBertForQuestionAnswering, DistilBertModel
from .pipeline import QuestionAnsweringPipeline, pipeline
from .tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["Config", "DistilBertForQuestionAnswering", "DistilBertModel", "QuestionAnsweringPipeline", "Tokenizer",
           "pipeline", "__version__"]
