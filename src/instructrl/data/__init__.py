"""Record types (prompt, demonstration, ranking), JSON-lines IO and prompt-set tools."""

from instructrl.data.records import Demonstration, Prompt, Ranking, Response  # noqa: F401
from instructrl.data.jsonl import read_records, write_records  # noqa: F401
