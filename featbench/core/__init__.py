"""Stage 0, what every stage uses: errors, paths, hashing, atomic writes and small caches
(`cache`), the registry type and the model resolver (`plugins`), result files and their task
records (`results`), processes launched together (`distributed`) and background iteration
(`prefetch`)."""

from featbench.core.lazy import lazy_exports

# Each name is imported from its module when first used (featbench.core.lazy).
_EXPORTS = {
    "featbench.core.cache": ("atomic_write", "cached_json", "cached_tensor", "write_bytes", "write_json"),
    "featbench.core.errors": ("AssetError", "DataError", "FeatbenchError", "UnknownNameError"),
    "featbench.core.hashing": ("canonical_json", "sha256_file", "sha256_json", "sha256_tensors"),
    "featbench.core.paths": ("cache_dir", "suites_dir"),
    "featbench.core.plugins": ("INVERTERS", "MAPPERS", "Registry", "registered_models", "resolve_model",
                               "source_sha256"),
    "featbench.core.results": ("RESULT_SCHEMA_VERSION", "ResultError", "TaskRecord", "read_result", "result_path",
                               "validate_result", "write_result"),
}

__all__ = [
    "AssetError", "DataError", "FeatbenchError", "INVERTERS", "MAPPERS", "RESULT_SCHEMA_VERSION", "Registry",
    "ResultError", "UnknownNameError", "atomic_write", "cache_dir", "cached_json", "cached_tensor", "canonical_json",
    "read_result", "registered_models", "resolve_model", "result_path", "sha256_file", "sha256_json",
    "sha256_tensors", "source_sha256", "suites_dir", "TaskRecord", "validate_result", "write_bytes", "write_json", "write_result",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
