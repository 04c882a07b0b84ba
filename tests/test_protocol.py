"""The wire, per protocol version: what smtpd sends parses into the right
fields, and what a filter writes is laid out for the version it answers."""

import pytest

from smtpd_filter_sdk import protocol as p
from smtpd_filter_sdk.protocol import ProtocolError, parse_report, parse_request


# -- versions as data ------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [(b"0.4", (0, 4)), (b"0.6", (0, 6)), (b"0.10", (0, 10)), (b"1.0", (1, 0)), (b"0.x", None), (b"", None), (b"06", None)],
)
def test_versions_are_integer_tuples(raw, expected):
    assert p.parse_version(raw) == expected


def test_version_0_42_is_newer_than_0_5_not_older():
    # filter-senderscore compared "0.42" < "0.5" as strings and took the 0.4 path.
    assert p.rules_for(b"0.42") is p.NEWEST_RULES
    assert p.rules_for(b"0.42").token_first is False


@pytest.mark.parametrize(
    "version, token_first, tx_middle, auth_first",
    [
        (b"0.4", True, True, False),
        (b"0.5", False, True, False),
        (b"0.6", False, False, False),
        (b"0.7", False, False, True),
        (b"0.9", False, False, True),  # unknown newer: newest rules
        (b"0.3", True, True, False),  # pre-release: oldest rules
    ],
)
def test_rules_table(version, token_first, tx_middle, auth_first):
    rules = p.rules_for(version)
    assert (rules.token_first, rules.tx_address_middle, rules.auth_result_first) == (
        token_first,
        tx_middle,
        auth_first,
    )


def test_bad_version_field_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        parse_report(b"report|zz|1.0|smtp-in|link-disconnect|aa")


# -- handshake ---------------------------------------------------------------


def test_config_collects_known_and_unknown_keys():
    cfg = p.Config()
    for line in [
        b"config|smtpd-version|7.8.0",
        b"config|protocol|0.7",
        b"config|smtp-session-timeout|300",
        b"config|subsystem|smtp-in",
        b"config|subsystem|smtp-out",
        b"config|admd|mx.example.org",
        b"config|future-key|a|b",
        b"config|ready",
    ]:
        cfg.apply(*p.parse_config(line))
    assert cfg.smtpd_version == "7.8.0"
    assert cfg.protocol_version == (0, 7) and cfg.report_decision_allowed
    assert cfg.session_timeout == 300
    assert cfg.subsystems == ["smtp-in", "smtp-out"]
    assert cfg.admd == "mx.example.org"
    assert cfg.extra == {"future-key": "a|b"}
    assert cfg.ready


def test_0_4_handshake_has_no_subsystem_and_that_is_fine():
    cfg = p.Config()
    for line in [b"config|smtpd-version|6.6.4p1", b"config|smtp-session-timeout|300", b"config|ready"]:
        cfg.apply(*p.parse_config(line))
    assert cfg.ready and cfg.subsystems == [] and cfg.admd is None and not cfg.report_decision_allowed


def test_registration_is_deduplicated_and_smtp_out_only_when_announced():
    cfg = p.Config(subsystems=["smtp-in"])
    reports = {("smtp-in", "link-connect"), ("smtp-out", "link-connect")}
    lines = p.registration_lines(reports, {"connect", "helo"}, cfg)
    assert lines == [
        b"register|report|smtp-in|link-connect",
        b"register|filter|smtp-in|connect",
        b"register|filter|smtp-in|helo",
        b"register|ready",
    ]
    cfg.subsystems.append("smtp-out")
    assert b"register|report|smtp-out|link-connect" in p.registration_lines(reports, set(), cfg)


def test_registration_refuses_names_smtpd_would_die_on():
    with pytest.raises(ValueError):
        p.registration_lines({("smtp-in", "link-reset")}, set(), p.Config())
    with pytest.raises(ValueError):
        p.registration_lines(set(), {"*"}, p.Config())


# -- report events -------------------------------------------------------------


def test_link_connect_ipv4_and_unknown_rdns():
    r = parse_report(b"report|0.6|1.5|smtp-in|link-connect|abc|<unknown>|error|192.0.2.7:41992|127.0.0.1:25")
    assert r.session == "abc" and r.event == "link-connect"
    assert r.params.rdns == "<unknown>" and r.params.fcrdns == "error"
    assert (r.params.src.family, r.params.src.host, r.params.src.port) == ("inet", "192.0.2.7", 41992)
    assert r.params.dest.port == 25


def test_link_connect_ipv6_with_scope_and_unix_socket():
    r = parse_report(b"report|0.7|1.5|smtp-in|link-connect|abc|h|pass|[fe80::1%eth0]:33576|[::1]:25")
    assert (r.params.src.family, r.params.src.host, r.params.src.scope, r.params.src.port) == (
        "inet6",
        "fe80::1",
        "eth0",
        33576,
    )
    r = parse_report(
        b"report|0.6|1.5|smtp-in|link-connect|abc|localhost|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock"
    )
    assert r.params.src.family == "unix" and r.params.src.is_local
    assert r.params.src.host == "/var/run/smtpd.sock"


def test_link_connect_rdns_with_pipe_is_split_from_the_right():
    r = parse_report(b"report|0.6|1|smtp-in|link-connect|s|we|ird|pass|1.2.3.4:5|6.7.8.9:25")
    assert r.params.rdns == "we|ird" and r.params.fcrdns == "pass"


@pytest.mark.parametrize(
    "version, rest, username, result",
    [
        (b"0.4", b"al|ice|pass", "al|ice", "pass"),
        (b"0.6", b"VBA|spil|fail", "VBA|spil", "fail"),  # the username that took smtpd down (#1213)
        (b"0.7", b"pass|al|ice", "al|ice", "pass"),
        (b"0.7", b"error|", "", "error"),
    ],
)
def test_link_auth_field_order_flips_at_0_7(version, rest, username, result):
    r = parse_report(b"report|" + version + b"|1|smtp-in|link-auth|s|" + rest)
    assert (r.params.username, r.params.result) == (username, result)


@pytest.mark.parametrize(
    "version, rest",
    [
        (b"0.4", b"0797092b|Cleani|X@example.org|ok"),  # address in the middle
        (b"0.5", b"0797092b|Cleani|X@example.org|ok"),
        (b"0.6", b"0797092b|ok|Cleani|X@example.org"),  # address last
        (b"0.7", b"0797092b|ok|Cleani|X@example.org"),
    ],
)
@pytest.mark.parametrize("event", [b"tx-mail", b"tx-rcpt"])
def test_tx_mail_and_rcpt_order_flips_at_0_6(version, rest, event):
    r = parse_report(b"report|" + version + b"|1|smtp-in|" + event + b"|s|" + rest)
    assert (r.params.msgid, r.params.result, r.params.address) == ("0797092b", "ok", "Cleani|X@example.org")


def test_null_sender_is_an_empty_address():
    r = parse_report(b"report|0.6|1|smtp-in|tx-mail|s|0797092b|ok|")
    assert r.params.address == ""


def test_events_without_parameters_have_no_trailing_field():
    assert isinstance(parse_report(b"report|0.6|1|smtp-in|link-disconnect|s").params, p.LinkDisconnect)
    assert isinstance(parse_report(b"report|0.6|1|smtp-in|timeout|s").params, p.Timeout)
    with pytest.raises(ProtocolError):
        parse_report(b"report|0.6|1|smtp-in|link-disconnect|s|extra")


def test_free_text_fields_keep_pipes_and_8bit_bytes():
    r = parse_report(b"report|0.6|1|smtp-in|protocol-client|s|MAIL FROM:<a|b@\xc3\xa9x.org> SIZE=1")
    assert r.params.command == "MAIL FROM:<a|b@\xe9x.org> SIZE=1"
    assert p.encode_field(r.params.command) == b"MAIL FROM:<a|b@\xc3\xa9x.org> SIZE=1"
    raw = b"report|0.6|1|smtp-in|protocol-server|s|250 ok \xff\xfe"
    assert p.encode_field(parse_report(raw).params.response) == b"250 ok \xff\xfe"


def test_filter_response_with_and_without_parameter():
    r = parse_report(b"report|0.6|1|smtp-in|filter-response|s|rcpt-to|reject|550 no|really")
    assert (r.params.phase, r.params.response, r.params.param) == ("rcpt-to", "reject", "550 no|really")
    r = parse_report(b"report|0.6|1|smtp-in|filter-response|s|connected|proceed")
    assert r.params.param is None


def test_tx_commit_size_and_envelope():
    assert parse_report(b"report|0.6|1|smtp-in|tx-commit|s|0a0b0c0d|1234").params.size == 1234
    env = parse_report(b"report|0.6|1|smtp-in|tx-envelope|s|0a0b0c0d|0a0b0c0d11223344").params
    assert env.evpid == "0a0b0c0d11223344"


@pytest.mark.parametrize(
    "line",
    [
        b"report|0.6|1|smtp-in|link-reset|s",  # no such event
        b"report|0.6|1|smtp-in|link-connect|s|only|three|fields",
        b"report|0.6|1|smtp-in|tx-mail|s|0797092b",
        b"report|0.6|1|smtp-in",
        b"report|0.6|1|smtp-in|link-greeting|s",  # missing its field
    ],
)
def test_malformed_reports_are_protocol_errors(line):
    with pytest.raises(ProtocolError):
        parse_report(line)


# -- filter requests -------------------------------------------------------------


def test_connect_request_has_rdns_and_src_without_port():
    req = parse_request(b"filter|0.6|1|smtp-in|connect|s|t|mail.example.org|192.0.2.1")
    cp = req.connect_params()
    assert cp.rdns == "mail.example.org" and cp.src.host == "192.0.2.1" and cp.src.port is None
    local = parse_request(b"filter|0.6|1|smtp-in|connect|s|t|localhost|local").connect_params()
    assert local.src.family == "local" and local.src.is_local
    v6 = parse_request(b"filter|0.6|1|smtp-in|connect|s|t|localhost|[::1]").connect_params()
    assert (v6.src.family, v6.src.host) == ("inet6", "::1")


def test_parameterless_phases_end_in_an_empty_field():
    req = parse_request(b"filter|0.6|1|smtp-in|data|7641df9771b4ed00|1ef1c203cc576e5d|")
    assert req.param == b"" and req.session == "7641df9771b4ed00" and req.token == "1ef1c203cc576e5d"


def test_user_controlled_parameter_keeps_pipes():
    req = parse_request(b"filter|0.6|1|smtp-in|mail-from|s|t|we|ird@example.org")
    assert req.text == "we|ird@example.org"


@pytest.mark.parametrize(
    "line",
    [
        b"filter|0.6|1|smtp-in|bogus|s|t|",
        b"filter|0.6|1|smtp-in|helo|s|t",  # no parameter field at all
        b"filter|0.6|1|smtp-in|helo||t|x",
        b"filter|nope|1|smtp-in|helo|s|t|x",
    ],
)
def test_malformed_requests_are_protocol_errors(line):
    with pytest.raises(ProtocolError):
        parse_request(line)


# -- output ------------------------------------------------------------------------


def test_response_id_order_follows_the_request_version():
    old, new = p.rules_for(b"0.4"), p.rules_for(b"0.6")
    assert p.format_result(old, b"SID", b"TOK", b"proceed") == b"filter-result|TOK|SID|proceed"
    assert p.format_result(new, b"SID", b"TOK", b"proceed") == b"filter-result|SID|TOK|proceed"
    assert p.format_dataline(old, b"SID", b"TOK", b"x") == b"filter-dataline|TOK|SID|x"


def test_dataline_room_for_real_ids_is_65485():
    assert p.dataline_room(b"0" * 16, b"1" * 16) == 65485


@pytest.mark.parametrize(
    "line, fatal",
    [
        (b"filter-result|s|t|proceed", False),
        (b"filter-result|s|t|proceed|", True),
        (b"filter-result|s|t|junk|x", True),
        (b"filter-result|s|t|reject|550 no", False),
        (b"filter-result|s|t|reject|550-no", True),
        (b"filter-result|s|t|reject|250 ok", True),
        (b"filter-result|s|t|reject", True),
        (b"filter-result|s|t|disconnect|421 bye", False),
        (b"filter-result|s|t|maybe", True),
        (b"filter-result|s|t|proceed\r", True),
        (b"filter-dataline|s|t|" + b"x" * 65485, False),
        (b"filter-dataline|s|t|" + b"x" * 65530, True),
        (b"report|1.0|smtp-in|s|hello", True),
        (b"", True),
    ],
)
def test_fatal_output_detection(line, fatal):
    assert (p.is_fatal_output(line) is not None) is fatal
