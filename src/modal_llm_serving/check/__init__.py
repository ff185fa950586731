"""`mls check`: any Modal LLM app file against the serving rules, grouped by family.

`rules` is the table (id, message, fix) and `run` applies it; each family's module holds the code
that looks for its rules (`pinning`, `storage`, `serving`, `security`, `regions`, `startup`,
`imports`), reading the file through `source` (its syntax tree, constants resolved), `app` (what
the file serves, and how) and `settings` (what it asks of Modal and of its engine).
"""

from modal_llm_serving.check.imports import import_skipped_reason
from modal_llm_serving.check.rules import RULES, Finding, Rule
from modal_llm_serving.check.run import check_file, check_files, check_source
from modal_llm_serving.check.startup import startup_note

__all__ = ["RULES", "Finding", "Rule", "check_file", "check_files", "check_source",
           "import_skipped_reason", "startup_note"]
