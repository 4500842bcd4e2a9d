"""The problem log keeps the first problems in file order and counts the rest: whatever arrives, its list and counts
are those of keeping every problem, sorting and cutting (it only skips building problems that would be cut)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneplane.logic.validation.problems import ProblemLog
from tuneplane.models.validation import Code, ValidationOptions

CODES = [Code.INVALID_JSON, Code.BLANK_LINE, Code.PII_DETECTED, Code.UNKNOWN_FORMAT]

problems = st.lists(
    st.tuples(st.sampled_from(["eval", "train"]), st.integers(1, 60), st.sampled_from(CODES)), max_size=300
)


@settings(max_examples=200, deadline=None)
@given(arrivals=problems, kept=st.integers(1, 12), in_file_order=st.booleans())
def test_the_list_and_counts_are_those_of_keeping_everything(
    arrivals: list[tuple[str, int, Code]], kept: int, in_file_order: bool
) -> None:
    # GIVEN problems arriving as a scan finds them (eval file first, lines increasing) or in any order
    if in_file_order:
        arrivals = sorted(arrivals, key=lambda p: (p[0] != "eval", p[1]))
    log = ProblemLog(ValidationOptions(max_listed_problems=kept))
    for source, line, code in arrivals:
        log.add(code, f"{code.value} at {line}", source=source, line=line)  # type: ignore[arg-type]
    # THEN the list is the first `kept` problems in report order (train before eval, then line, then code)
    reference = sorted(
        enumerate(arrivals), key=lambda item: (item[1][0] == "eval", item[1][1], item[1][2].value, item[0])
    )[:kept]
    assert [(p.source, p.line, p.code) for p in log.listed()] == [problem for _, problem in reference]
    # AND every problem is counted, with the first message and first lines of each code
    counts = {(c.source, c.code): c for c in log.counts()}
    for (source, code), count in counts.items():
        mine = [(s, line) for s, line, c in arrivals if (s, c) == (source, code)]
        assert count.count == len(mine)
        assert count.first_message == f"{code.value} at {mine[0][1]}"
        assert count.first_lines == sorted(line for _, line in mine[:5])
    assert sum(c.count for c in counts.values()) == len(arrivals)
