"""Stage 5, the leaderboard of a suite version, from result files alone: the task-hash ledger
(`hashes`), admission (`admission`), rank intervals (`ranking`), the tidy frame, summaries and
text tables (`tables`), the HTML page (`html`, `browser`), build / show / compare
(`leaderboard`), re-running a submission's tasks (`submit_check`), and the Hub (`publish`)."""

from featbench.core.lazy import lazy_exports

# Each name is imported from its module when first used (featbench.core.lazy).
_EXPORTS = {
    "featbench.board.admission": ("Collection", "collect"),
    "featbench.board.hashes": ("TaskHashes",),
    "featbench.board.leaderboard": ("build", "compare", "default_root", "show"),
    "featbench.board.publish": ("install_published", "publish"),
    "featbench.board.submit_check": ("submit_check",),
}

__all__ = ["Collection", "TaskHashes", "build", "collect", "compare", "default_root", "install_published",
           "publish", "show", "submit_check"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
