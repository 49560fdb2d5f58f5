import pytest

from gbatch_flows.api import Outcome, classify_result, classify_status, parse_result_line


@pytest.mark.parametrize("status,code,expected", [
    (200, None, Outcome.OK),
    (429, None, Outcome.RETRYABLE),
    (500, None, Outcome.RETRYABLE),
    (503, None, Outcome.RETRYABLE),
    (400, None, Outcome.FATAL),
    (401, None, Outcome.FATAL),
    (404, None, Outcome.FATAL),
    (400, "rate_limit_exceeded", Outcome.RETRYABLE),
    (None, "batch_expired", Outcome.RETRYABLE),
    (None, None, Outcome.RETRYABLE),
])
def test_classify_status(status, code, expected):
    assert classify_status(status, code) is expected


def test_parse_and_classify_batch_lines():
    ok = parse_result_line(b'{"id":"r1","custom_id":"1-0-0","response":{"status_code":200,"request_id":"q",'
                           b'"body":{"choices":[]}},"error":null}')
    assert ok.custom_id == "1-0-0" and classify_result(ok) == (Outcome.OK, None)
    bad = parse_result_line(b'{"id":"r2","custom_id":"2-0-0","response":{"status_code":400,"request_id":"q",'
                            b'"body":{"error":{"code":"invalid_value","message":"x"}}},"error":null}')
    assert classify_result(bad) == (Outcome.FATAL, "400 invalid_value")
    expired = parse_result_line(b'{"id":"r3","custom_id":"3-0-0","response":null,'
                                b'"error":{"code":"batch_expired","message":"expired"}}')
    assert classify_result(expired)[0] is Outcome.RETRYABLE
    assert parse_result_line(b"{not json") is None
    assert parse_result_line(b'{"id":"x"}') is None
    assert classify_result(None) == (Outcome.RETRYABLE, "missing_result")
