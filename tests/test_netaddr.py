"""netaddr: client addresses, CIDR and domain list files (unit + property)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd_filter_sdk.netaddr import (
    CIDRList,
    DomainList,
    ListFile,
    ListFileError,
    client_ip,
    is_local,
    parse_network,
)
from smtpd_filter_sdk.protocol import parse_address

# -- client addresses ----------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("192.0.2.7:41234", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
        ("[2001:db8::1]:25", "2001:db8::1"),
        ("[::1]", "::1"),
        ("[fe80::1%eth0]:25", "fe80::1"),
        ("[::ffff:192.0.2.7]:25", "192.0.2.7"),  # IPv4-mapped: scored/listed as IPv4
        ("unix:/var/run/smtpd.sock", None),
        ("local", None),
        ("garbage", None),
        ("999.1.1.1:25", None),
    ],
)
def test_client_ip(raw, expected):
    got = client_ip(parse_address(raw))
    assert (str(got) if got is not None else None) == expected
    assert client_ip(raw) == got  # text works too


def test_is_local():
    assert is_local("unix:/var/run/smtpd.sock") and is_local("local")
    assert not is_local("192.0.2.1:25") and not is_local(None)


# -- CIDR lists -------------------------------------------------------------------

SAMPLE = """\
# office and friends
192.0.2.7
198.51.100.0/24        # the whole lab
10.1.2.3/8             # host bits are fine, like Go's ParseCIDR
2001:db8::/32
[2001:db8:ffff::1]

   # indented comment
"""


def test_cidr_list_parses_and_matches():
    cl = CIDRList.parse(SAMPLE, "allow.txt")
    assert len(cl) == 5
    for ip in ["192.0.2.7", "198.51.100.1", "198.51.100.255", "10.200.0.1", "2001:db8::5", "2001:db8:ffff::1", "::ffff:192.0.2.7"]:
        assert ip in cl, ip
        assert ipaddress.ip_address(ip) in cl
    for ip in ["192.0.2.8", "198.51.101.1", "11.0.0.1", "2001:db9::1", "::1", "not an ip", ""]:
        assert ip not in cl, ip
    assert 42 not in cl


@pytest.mark.parametrize(
    "line, why",
    [
        ("192.0.2.300", "not an IP address or CIDR"),
        ("192.0.2.0/33", "longer than 32"),
        ("2001:db8::/129", "longer than 128"),
        ("192.0.2.0/", "bad prefix length"),
        ("192.0.2.0/x", "bad prefix length"),
        ("example.com", "not an IP address or CIDR"),
        ("[2001:db8::1", "not an IP address or CIDR"),
        ("fe80::1%eth0", "scoped"),
        ("192.0.2.1 192.0.2.2", "not an IP address or CIDR"),
    ],
)
def test_a_bad_line_names_file_and_line(line, why):
    text = "# header\n192.0.2.1\n\n" + line + "\n10.0.0.0/8\n"
    with pytest.raises(ListFileError) as exc:
        CIDRList.parse(text, "/etc/mail/allow.txt")
    assert str(exc.value).startswith("/etc/mail/allow.txt:4: ")
    assert why in str(exc.value)
    assert exc.value.line == 4 and "\n" not in str(exc.value)


def test_list_file_load_and_reload_keeps_the_old_list_on_error(tmp_path):
    path = tmp_path / "allow"
    path.write_text("192.0.2.0/24\n")
    lf = ListFile(str(path), CIDRList.parse)
    assert "192.0.2.9" in lf.current
    path.write_text("198.51.100.0/24\n")
    lf.reload()
    assert "198.51.100.9" in lf.current and "192.0.2.9" not in lf.current
    path.write_text("203.0.113.0/24\nbogus\n")
    with pytest.raises(ListFileError, match=r"allow:2: "):
        lf.reload()
    assert "198.51.100.9" in lf.current  # the old list stays
    path.unlink()
    with pytest.raises(ListFileError, match="No such file"):
        lf.reload()
    assert "198.51.100.9" in lf.current


def test_list_file_start_errors(tmp_path):
    with pytest.raises(ListFileError, match=r"^/nonexistent/allow: No such file"):
        ListFile("/nonexistent/allow", CIDRList.parse)
    bad = tmp_path / "latin1"
    bad.write_bytes(b"192.0.2.1 # caf\xe9\n")
    with pytest.raises(ListFileError, match="not UTF-8"):
        ListFile(str(bad), CIDRList.parse)


# properties: whatever the text, parsing gives a list or a file:line error

ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)


@st.composite
def networks(draw):
    ip = draw(st.one_of(ipv4, ipv6))
    plen = draw(st.integers(0, ip.max_prefixlen))
    return ipaddress.ip_network(f"{ip}/{plen}", strict=False)


@given(st.lists(networks(), max_size=20), st.one_of(ipv4, ipv6))
def test_membership_agrees_with_ipaddress(nets, probe):
    text = "\n".join(f"{n}  # entry {i}" for i, n in enumerate(nets))
    cl = CIDRList.parse(text)
    # An IPv4-mapped IPv6 client (::ffff:a.b.c.d) is matched as the IPv4 address.
    if probe.version == 6 and probe.ipv4_mapped is not None:
        probe = probe.ipv4_mapped
    expected = any(probe in n for n in nets if n.version == probe.version)
    assert (probe in cl) == expected


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), max_size=15))
def test_arbitrary_text_parses_or_names_the_line(lines):
    text = "\n".join(lines)
    try:
        cl = CIDRList.parse(text, "f")
    except ListFileError as exc:
        assert exc.source == "f" and exc.line is not None and 1 <= exc.line
        assert str(exc).startswith(f"f:{exc.line}: ")
        assert "\n" not in str(exc) and "\r" not in str(exc)
    else:
        assert len(cl) <= len(lines)


@given(st.one_of(ipv4, ipv6), st.sampled_from(["", "/0", "/8", "/16", "/24", "/32"]))
def test_parse_network_round_trip(ip, suffix):
    text = f"[{ip}]{suffix}" if ip.version == 6 and suffix == "" else f"{ip}{suffix}"
    net = parse_network(text)
    assert ip in net


# -- domain lists --------------------------------------------------------------------


def test_domain_list():
    dl = DomainList.parse("example.com\n.Example.NET.  # dots and case\n*.mail.test\n")
    assert dl.match("example.com") == "example.com"
    assert dl.match("MX1.Example.com.") == "example.com"
    assert dl.match("a.b.example.net") == "example.net"
    assert dl.match("x.mail.test") == "mail.test"
    assert dl.match("badexample.com") is None
    assert dl.match("example.org") is None and dl.match("") is None and dl.match(None) is None
    assert "mx.example.com" in dl and "com" not in dl


@pytest.mark.parametrize("line", ["exa mple.com", "-bad.com", "bad-.com", "a..b", "x" * 64 + ".com", "*", "."])
def test_domain_list_bad_lines(line):
    with pytest.raises(ListFileError, match=r"^domains:2: "):
        DomainList.parse("good.test\n" + line + "\n", "domains")


@given(st.lists(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True), min_size=1, max_size=10),
       st.from_regex(r"([a-z0-9]{1,5}\.){0,3}", fullmatch=True))
def test_a_listed_domain_covers_its_subdomains(names, prefix):
    dl = DomainList(names)
    for n in names:
        assert dl.match(prefix + n) is not None
