"""Which partners get a password expiry notice (no host needed)."""

from exchange.messaging.expiry_notices import _told, expiring, mark_told
from exchange.partners import Partner

TODAY = 20_000


def partner(name: str, present: bool = True) -> Partner:
    return Partner(name=name, organisation="O", email=f"{name}@example.org", phone="+31612345678", present=present)


def entry(changed, max_days=90, warn=14, inactive=30, expire=None, password_set=True) -> dict:
    return {
        "password_set": password_set, "lastchg": changed, "min_days": 1, "max_days": max_days,
        "warn_days": warn, "inactive_days": inactive, "expire": expire,
    }  # fmt: skip


def test_told_within_the_warning_days_and_until_the_account_closes():
    shadow = {
        "fresh": entry(TODAY - 10),  # expires in 80 days
        "soon": entry(TODAY - 80),  # in 10 days: within the 14 warning days
        "expired": entry(TODAY - 100),  # 10 days ago: the next login still changes it
        "closed": entry(TODAY - 121),  # more than 90 + 30 days: it no longer opens, nothing to say
        "no-aging": entry(TODAY - 500, max_days=None),  # key-only partners, no password aging
        "forced": entry(0),  # `chage -d 0` by hand: no date to count from
        "locked": entry(TODAY - 80, expire=TODAY - 1),
        "keys-only": entry(TODAY - 80, password_set=False),
        "absent": entry(TODAY - 80),
    }
    partners = [partner(name) for name in shadow if name != "absent"] + [partner("absent", present=False)]
    found = {item.partner.name: item for item in expiring(partners, shadow, TODAY)}
    assert sorted(found) == ["expired", "soon"]
    assert (found["soon"].expires, found["soon"].locks) == (TODAY + 11, TODAY + 41)
    assert found["expired"].changed == TODAY - 100


def test_one_notice_a_password(tmp_path):
    assert _told(tmp_path, "cardiology") is None
    mark_told("cardiology", TODAY - 80, tmp_path)
    assert _told(tmp_path, "cardiology") == TODAY - 80
    (tmp_path / "expiry-notices" / "cardiology.json").write_text("{not json")
    assert _told(tmp_path, "cardiology") is None  # unreadable: told once more rather than never
