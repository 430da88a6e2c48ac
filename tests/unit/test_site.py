"""Site data: validated with errors that name the key, secrets written only where they belong."""

import pytest
import yaml

from exchange.links import LinkError, validate_request
from exchange.policy import load_policy
from exchange.site import SiteError, load_site, parse_site, site_yaml
from roles import REPO
from roles.settings import HostSettingsError, host_settings
from tests.sites import relay_site

POLICY = load_policy(REPO / "policies.yaml").policy
GOOD = relay_site(2525, "http://127.0.0.1:8080/sms", "/etc/imaging-exchange/ca.pem")


def test_good_site_data_round_trips_through_the_file_the_deploy_writes(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml(parse_site(GOOD, "test")))
    site = load_site(path)
    assert site.email.password == GOOD["email"]["password"]
    assert "password" not in repr(site.email) and "Bearer" not in repr(site.sms)
    assert site.sftp_server == "exchange.test.example"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"portal_url": "http://exchange.test.example"}, "site.portal_url: must be https://<host name>"),
        ({"institution": {"nl": "het Testziekenhuis"}}, "site.institution: needs a text for every language"),
        ({"staff_mailbox": "not-an-address"}, "site.staff_mailbox: value is not a valid email address"),
        ({"email": {"transport": "pigeon"}}, "site.email: Input tag 'pigeon' found using 'transport' does not match"),
        (
            {"sms": {"transport": "http", "url": "http://sms.example.net/send"}},
            "site.sms.http.url: must be an https:// URL",
        ),
        ({"colour": "blue"}, "site.colour: unknown host data key"),
        (
            {"windows_viewer": "run_cdviewer.exe"},
            "site.viewer_dir: required when windows_viewer is set (run_cdviewer.exe): the folder on the server that "
            "holds run_cdviewer.exe at its root",
        ),
        (
            {"windows_viewer": "viewer/run.exe", "viewer_dir": "/srv/viewer"},
            "site.windows_viewer: must be a file name at the root of viewer_dir",
        ),
        (
            {"windows_viewer": "run_cdviewer.exe", "viewer_dir": "viewer"},
            "site.viewer_dir: must be an absolute path",
        ),
        (
            {"viewer_dir": "/srv/viewer"},
            "site.viewer_dir: needs windows_viewer, the program at its root that recipients start on Windows",
        ),
        ({"timezone": "Europe/Leiden"}, "site.timezone: must be an IANA time zone name such as Europe/Amsterdam"),
        ({"sftp_port": 0}, "site.sftp_port: Input should be greater than or equal to 1"),
    ],
)
def test_bad_site_data_is_refused_naming_host_and_key(change, message):
    with pytest.raises(HostSettingsError) as refused:
        host_settings("exchange01", {"site": {**GOOD, **change}})
    assert f"inventory host exchange01: {message}" in str(refused.value)


def test_a_server_without_site_data_says_how_to_get_it(tmp_path):
    with pytest.raises(SiteError, match="no site data on this server; set `site` in the inventory"):
        load_site(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({**GOOD, "portal_url": "ftp://x"}))
    with pytest.raises(SiteError, match=r"broken.yaml: portal_url: must be https"):
        load_site(tmp_path / "broken.yaml")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": "patient@"}, "link issue: --email: value is not a valid email address"),
        ({"phone": "0612345678"}, "link issue: --phone: String should match pattern"),
        ({"phone": "+31 6 12345678"}, "E.164 form"),
        ({"lang": "de"}, "link issue: --lang: Input should be 'nl' or 'en'"),
        ({"days": 8}, "link issue: --days: at most 7 (policies.yaml links.validity_days)"),
        ({"days": 0}, "link issue: --days: Input should be greater than or equal to 1"),
        ({"note": "two\nlines"}, "link issue: --note"),
    ],
)
def test_bad_link_requests_are_refused_before_anything_happens(fields, message):
    request = {"email": "patient@example.org", "phone": "+31612345678", "lang": "nl", "note": "", "days": None}
    with pytest.raises(LinkError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        validate_request(POLICY, **{**request, **fields})


def test_a_good_request_gets_the_policy_validity_by_default():
    request = validate_request(
        POLICY, email="patient@example.org", phone="+31612345678", lang="en", note="CT", days=None
    )
    assert request.days == POLICY.links.validity_days


def test_a_viewer_named_in_the_messages_comes_with_its_folder_and_times_with_a_zone():
    site = host_settings("exchange01", {"site": GOOD | {"windows_viewer": "run_cdviewer.exe", "viewer_dir": "/srv/v"}})
    assert site.site.viewer_dir == "/srv/v" and site.site.timezone == "Europe/Amsterdam"
    assert parse_site(GOOD | {"timezone": "America/New_York"}, "test").zone.key == "America/New_York"
    urgent = {**GOOD["contact"], "urgent_phone": "071-526 9111"}
    assert parse_site(GOOD | {"contact": urgent}, "test").contact.urgent_phone == "071-526 9111"


def test_partners_are_told_the_port_sshd_listens_on_unless_the_site_says_otherwise():
    assert host_settings("exchange01", {"site": GOOD}).site.sftp_port == 22
    assert host_settings("exchange01", {"sshd_port": 2222, "site": GOOD}).site.sftp_port == 2222
    behind_nat = host_settings("exchange01", {"sshd_port": 2222, "site": GOOD | {"sftp_port": 22022}})
    assert behind_nat.site.sftp_port == 22022
    # The web page's copy of the site (roles/portal.py writes it to portal.yaml) has the port and the zone.
    public = behind_nat.site.public()
    assert public.sftp_port == 22022 and public.timezone == "Europe/Amsterdam"
