"""Content Redundancy Detector: the original /analyze, /similarity and /quality
formulas, plus corpora with exact, near, containment and semantic duplicate
search, clusters and reports. Plain Python: no Ray, no HTTP.

Storage-backed parts (`CorpusRepository`, `RedundancyService`) are imported
from their modules so the pure logic can be used without a database.
"""

from business_modules.redundancy.analysis import analyze, quality, similarity
from business_modules.redundancy.detector import Detector
from business_modules.redundancy.errors import (
    ConflictError,
    InvalidInputError,
    LimitExceededError,
    NotFoundError,
    RedundancyError,
)
from business_modules.redundancy.models import CanonicalRule, Match, Method, NewDocument, Pair
from business_modules.redundancy.settings import RedundancySettings

__all__ = [
    "CanonicalRule",
    "ConflictError",
    "Detector",
    "InvalidInputError",
    "LimitExceededError",
    "Match",
    "Method",
    "NewDocument",
    "NotFoundError",
    "Pair",
    "RedundancyError",
    "RedundancySettings",
    "analyze",
    "quality",
    "similarity",
]
