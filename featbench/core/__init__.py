"""Stage 0, what every stage uses: errors, paths, hashing, atomic writes and small caches
(`cache`), the registry type and the model resolver (`plugins`), result files and their task
records (`results`), processes launched together (`distributed`) and background iteration
(`prefetch`)."""

from featbench.core.cache import atomic_write, cached_json, cached_tensor, write_bytes, write_json
from featbench.core.errors import AssetError, DataError, FeatbenchError, UnknownNameError
from featbench.core.hashing import canonical_json, sha256_file, sha256_json, sha256_tensors
from featbench.core.paths import cache_dir, suites_dir
from featbench.core.plugins import INVERTERS, MAPPERS, Registry, registered_models, resolve_model, source_sha256
from featbench.core.results import (RESULT_SCHEMA_VERSION, ResultError, TaskRecord, read_result, result_path,
                                    validate_result, write_result)

__all__ = [
    "AssetError", "DataError", "FeatbenchError", "INVERTERS", "MAPPERS", "RESULT_SCHEMA_VERSION", "Registry",
    "ResultError", "UnknownNameError", "atomic_write", "cache_dir", "cached_json", "cached_tensor", "canonical_json",
    "read_result", "registered_models", "resolve_model", "result_path", "sha256_file", "sha256_json",
    "sha256_tensors", "source_sha256", "suites_dir", "TaskRecord", "validate_result", "write_bytes", "write_json", "write_result",
]
