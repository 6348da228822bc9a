"""featbench's reference baselines, written against the public interface alone, as a submitter
would write them. They are registered as ``featbench.mappers`` entry points in pyproject.toml."""
