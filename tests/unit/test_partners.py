"""Partner data: validated with messages naming the file and the key."""

import pytest

from exchange.partners import PartnerDataError, load_partners
from roles import REPO


def write(tmp_path, text: str):
    path = tmp_path / "partners.yaml"
    path.write_text(text)
    return path


def test_the_test_hosts_partner_file_is_valid():
    partners = load_partners(REPO / "inventory/partners.yaml")
    assert [p.name for p in partners] == ["cardiology", "st-elsewhere"]
    assert all(p.present for p in partners)


GOOD = "  - {name: alice, organisation: A, email: a@b.example, phone: '+31612345678'}\n"


@pytest.mark.parametrize(
    "entry, words",
    [
        (
            "  - {name: Alice, organisation: A, email: a@b.example, phone: '+31612345678'}\n",
            "partners.0.name: String should match pattern",
        ),
        (
            "  - {name: root, organisation: A, email: a@b.example, phone: '+31612345678'}\n",
            "partners.0.name: 'root' is reserved",
        ),
        (
            "  - {name: alice, organisation: A, email: not-an-email, phone: '+31612345678'}\n",
            "partners.0.email: value is not a valid email address",
        ),
        (
            "  - {name: alice, organisation: A, email: a@b.example, phone: '0612345678'}\n",
            "partners.0.phone: String should match pattern",
        ),
        (
            "  - {name: alice, organisation: A, email: a@b.example, phone: '+31612345678', present: 'no'}\n",
            "partners.0.present: Input should be a valid boolean",
        ),
        (
            "  - {name: alice, organisation: A, email: a@b.example, phone: '+31612345678', public_keys: ['ssh-dss AAAA']}\n",
            "partners.0.public_keys: key 0 is not an OpenSSH public key line",
        ),
        (
            "  - {name: alice, organisation: A, email: a@b.example, phone: '+31612345678', shell: /bin/bash}\n",
            "partners.0.shell: unknown key",
        ),
        (GOOD + GOOD, "partners: partner name 'alice' appears twice"),
    ],
)
def test_bad_partner_data(tmp_path, entry, words):
    path = write(tmp_path, "partners:\n" + entry)
    with pytest.raises(PartnerDataError) as caught:
        load_partners(path)
    assert f"{path}: {words}" in str(caught.value)


def test_unreadable_and_malformed_files(tmp_path):
    assert "cannot read partner file" in str(
        pytest.raises(PartnerDataError, load_partners, tmp_path / "none.yaml").value
    )
    assert "not valid YAML" in str(pytest.raises(PartnerDataError, load_partners, write(tmp_path, "partners: [")).value)
    assert "must be a mapping" in str(pytest.raises(PartnerDataError, load_partners, write(tmp_path, "- a\n")).value)


def test_rsa_keys_below_the_policy_size_are_named(tmp_path):
    """sshd's RequiredRSASize refuses them at login; the deploy refuses them first."""
    import subprocess

    from exchange.partners import rsa_key_bits, short_rsa_keys

    keys = {}
    for name, args in {"rsa2048": ["-t", "rsa", "-b", "2048"], "rsa3072": ["-t", "rsa", "-b", "3072"],
                       "ed25519": ["-t", "ed25519"]}.items():  # fmt: skip
        subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-f", str(tmp_path / name)], check=True)
        keys[name] = (tmp_path / f"{name}.pub").read_text().strip()
    assert [rsa_key_bits(keys[n]) for n in ("rsa2048", "rsa3072", "ed25519")] == [2048, 3072, None]
    owners = {"partner alice-clinic": [keys["ed25519"], keys["rsa2048"]], "auditor audit-jdoe": [keys["rsa3072"]]}
    assert short_rsa_keys(owners, 3072) == ["partner alice-clinic: key 1 is an RSA key of 2048 bits, below 3072"]


@pytest.mark.parametrize("text", ["", "# partners of the hospital\n", "{}\n"], ids=["empty", "comment-only", "mapping"])
def test_a_file_without_the_partners_key_is_refused_not_read_as_no_partners(tmp_path, text):
    # Read as "no partners", a truncated file would lock every partner and, after retention, remove them.
    with pytest.raises(PartnerDataError, match="partners"):
        load_partners(write(tmp_path, text))


def test_no_partners_at_all_is_said_explicitly(tmp_path):
    assert load_partners(write(tmp_path, "partners: []\n")) == ()
