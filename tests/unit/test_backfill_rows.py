"""What a backfill file's rows become: CSV cells and JSON Lines, by the rules `forwarder send --file` documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from forwarder_local.backfill import BackfillError, Row, backfill_id, idempotency_key, read_rows


def rows(path: Path, text: str) -> list[Row]:
    path.write_text(text, encoding="utf-8")
    return list(read_rows(path))


def test_a_csv_header_names_the_attributes_and_an_empty_cell_is_absent(tmp_path: Path) -> None:
    read = rows(
        tmp_path / "customers.csv",
        "\ufeffemail, phone ,tags,vip,city\n"
        'jane@example.com,0047123,"[""vip"", ""newsletter""]",true,\n'
        "ola@example.com,  ,[not json,false\n",
    )
    assert read == [
        Row(2, {"email": "jane@example.com", "phone": "0047123", "tags": ["vip", "newsletter"], "vip": True}),
        Row(3, {"email": "ola@example.com", "tags": "[not json", "vip": False}),
    ]


def test_csv_rows_are_named_by_their_first_line_and_a_row_with_too_many_cells_is_refused(
    tmp_path: Path,
) -> None:
    read = rows(
        tmp_path / "customers.csv",
        'email,note\na@example.com,"two\nlines"\n\nb@example.com,x,y\n',
    )
    assert [row.line for row in read] == [2, 5]
    assert read[0].data == {"email": "a@example.com", "note": "two\nlines"}
    assert read[1].problem == "3 cells, but the header names 2 attributes"


def test_csv_rows_of_separators_only_are_skipped_like_blank_lines(tmp_path: Path) -> None:
    # spreadsheet exports often end with rows such as ",,": nothing to send, nothing to refuse
    read = rows(tmp_path / "customers.csv", "email,first_name\r\njane@example.com,Jane\r\n,\r\n , \r\n")
    assert read == [Row(2, {"email": "jane@example.com", "first_name": "Jane"})]


@pytest.mark.parametrize(
    ("header", "message"),
    [("email,,city", "empty column name (column 2)"), ("email,city,email", "names email more than once")],
)
def test_a_header_without_usable_names_stops_the_backfill(tmp_path: Path, header: str, message: str) -> None:
    with pytest.raises(BackfillError, match=re.escape(message)):
        rows(tmp_path / "customers.csv", f"{header}\na,b,c\n")


def test_json_lines_hold_a_data_object_or_an_envelope_and_bad_lines_are_refused(tmp_path: Path) -> None:
    read = rows(
        tmp_path / "customers.jsonl",
        '{"email": "a@example.com", "age": 41}\n\n{"data": {"email": "b@example.com"}}\n[1]\n{oops\n',
    )
    assert [(row.line, row.data, row.problem) for row in read[:2]] == [
        (1, {"email": "a@example.com", "age": 41}, None),
        (3, {"email": "b@example.com"}, None),
    ]
    assert read[2].line == 4 and read[2].problem == "not a JSON object of attributes"
    assert read[3].line == 5 and read[3].problem is not None and read[3].problem.startswith("not JSON")


def test_a_file_that_is_not_utf8_stops_the_backfill(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes("email,city\na@example.com,Kraków\n".encode("latin-1"))
    with pytest.raises(BackfillError, match="not UTF-8"):
        list(read_rows(path))


def test_the_idempotency_key_is_the_backfills_and_the_rows() -> None:
    # the same file sent the same way resumes; to another group key, or with other --set values, it is new
    first = backfill_id("ab" * 32, "POST", "/v1/contacts", "demo", {})
    assert first == backfill_id("ab" * 32, "POST", "/v1/contacts", "demo", {})
    assert first != backfill_id("cd" * 32, "POST", "/v1/contacts", "demo", {})
    assert first != backfill_id("ab" * 32, "POST", "/v1/contacts", "other", {})
    assert first != backfill_id("ab" * 32, "POST", "/v1/contacts", "demo", {"source": "crm"})
    key = idempotency_key(first, 10_000_000)
    assert key != idempotency_key(first, 2) and len(key) <= 128


def test_the_summary_shows_each_distinct_message_of_a_code_with_its_own_lines(tmp_path: Path) -> None:
    from forwarder_local.backfill import Outcome, Summary

    summary = Summary(tmp_path / "rows.jsonl", tmp_path / "progress.jsonl", rows=3)
    summary.add(Outcome(5, 400, "INVALID_ROW", "not JSON: Expecting value (column 1)"))
    summary.add(Outcome(6, 400, "INVALID_ROW", "not a JSON object of attributes"))
    summary.add(Outcome(7, 400, "INVALID_ROW", "not a JSON object of attributes"))
    lines = summary.lines()
    assert "    INVALID_ROW  2 row(s), lines 6, 7: not a JSON object of attributes" in lines
    assert "    INVALID_ROW  1 row(s), line 5: not JSON: Expecting value (column 1)" in lines
