"""vectune: adapt an open embedding model to a domain on Ray and re-index Qdrant.

The public API is what a user imports; everything else is internal.
"""

from vectune.errors import DataError, GateFailed, IndexingError, ModelError, SpecError, StageError, VectuneError
from vectune.spec import Spec, load_spec

__version__ = "0.1.0"
__all__ = ["DataError", "GateFailed", "IndexingError", "ModelError", "Spec", "SpecError", "StageError",
           "VectuneError", "load_spec", "__version__"]
