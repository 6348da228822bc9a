"""Stage 5, the leaderboard of a suite version, from result files alone: the task-hash ledger
(`hashes`), admission (`admission`), rank intervals (`ranking`), the tidy frame, summaries and
text tables (`tables`), the HTML page (`html`, `browser`), build / show / compare
(`leaderboard`), re-running a submission's tasks (`submit_check`), and the Hub (`publish`)."""

from featbench.board.admission import Collection, collect
from featbench.board.hashes import TaskHashes
from featbench.board.leaderboard import build, compare, default_root, show
from featbench.board.publish import install_published, publish
from featbench.board.submit_check import submit_check

__all__ = ["Collection", "TaskHashes", "build", "collect", "compare", "default_root", "install_published",
           "publish", "show", "submit_check"]
