import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from clazar_dest import envparse as ep


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("no", False)]
)
def test_booleans_accept_the_usual_spellings(raw, expected):
    assert ep.parse_bool({"DEBUG": raw}, "DEBUG", not expected) is expected


def test_an_unset_or_blank_boolean_takes_the_default():
    assert ep.parse_bool({}, "DEBUG", True) is True
    assert ep.parse_bool({"DEBUG": "  "}, "DEBUG", False) is False


def test_a_nonsense_boolean_is_refused_with_its_name():
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe' is not a boolean"):
        ep.parse_bool({"DEBUG": "maybe"}, "DEBUG", False)


def test_integers_are_checked_against_their_bounds():
    assert ep.parse_int({"N": "120"}, "N", 1, minimum=1) == 120
    with pytest.raises(ImproperlyConfigured, match="not a whole number"):
        ep.parse_int({"N": "12.5"}, "N", 1)
    with pytest.raises(ImproperlyConfigured, match="below the minimum of 1"):
        ep.parse_int({"N": "0"}, "N", 1, minimum=1)
    with pytest.raises(ImproperlyConfigured, match="above the maximum"):
        ep.parse_int({"N": "7"}, "N", 1, maximum=5)


def test_lists_split_on_commas_and_refuse_empty_items():
    assert ep.parse_list({"H": "a.example, b.example"}, "H", []) == ["a.example", "b.example"]
    assert ep.parse_list({}, "H", ["x"]) == ["x"]
    with pytest.raises(ImproperlyConfigured, match="empty item"):
        ep.parse_list({"H": "a,,b"}, "H", [])


def test_urls_must_have_an_allowed_scheme_and_a_host():
    assert (
        ep.parse_url({"U": "redis://127.0.0.1:6379/0"}, "U", schemes=("redis",)) == "redis://127.0.0.1:6379/0"
    )
    with pytest.raises(ImproperlyConfigured, match="must be a URL starting with redis"):
        ep.parse_url({"U": "127.0.0.1:6379"}, "U", schemes=("redis",))


@pytest.mark.parametrize(
    "bad", ["ftp://x.example", "https://user:pw@api.clazar.io", "https://api.clazar.io/v1", "https://h:99999"]
)
def test_api_origins_refuse_userinfo_paths_and_bad_ports(bad):
    with pytest.raises(ImproperlyConfigured):
        ep.parse_origin(bad, "CLAZAR_API_BASES")


def test_api_origins_are_normalised():
    assert ep.parse_origin("https://API.clazar.io/", "X") == "https://api.clazar.io"
    assert ep.parse_origin("http://127.0.0.1:8765", "X") == "http://127.0.0.1:8765"


def test_a_secret_can_come_from_a_file(tmp_path):
    path = tmp_path / "key"
    path.write_text("from-file\n")
    assert ep.read_secret({"SECRET_KEY_FILE": str(path)}, "SECRET_KEY") == "from-file"


def test_a_secret_set_twice_or_from_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="not both"):
        ep.read_secret({"SECRET_KEY": "a", "SECRET_KEY_FILE": "b"}, "SECRET_KEY")
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        ep.read_secret({"SECRET_KEY_FILE": str(tmp_path / "missing")}, "SECRET_KEY")


def test_a_generated_secret_is_made_once_and_kept_private(tmp_path):
    first = ep.generated_secret(tmp_path, "secret_key", ep.new_secret_key)
    assert ep.generated_secret(tmp_path, "secret_key", ep.new_secret_key) == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_fernet_key_lists_are_validated():
    good = Fernet.generate_key().decode()
    assert ep.parse_fernet_keys(f"{good}, {good}", "K") == [good, good]
    with pytest.raises(ImproperlyConfigured, match="key 2 is not a Fernet key"):
        ep.parse_fernet_keys(f"{good},nope", "K")


def test_settings_refuse_a_nonsense_environment_at_start_up():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={"DJANGO_SETTINGS_MODULE": "clazar_dest.settings", "DEBUG": "perhaps", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DEBUG='perhaps' is not a boolean" in result.stderr


@pytest.mark.parametrize(
    "good",
    ["postgres://postgres@127.0.0.1:5432/test", "postgresql://u:p@db/clazar", "sqlite:////var/lib/c.sqlite3"],
)
def test_database_urls_for_postgresql_and_sqlite_are_accepted(good):
    assert ep.parse_database_url({"DATABASE_URL": good}) == good


@pytest.mark.parametrize("bad", ["mysql://db/x", "postgres://db", "sqlite://relative.db", "localhost:5432"])
def test_other_database_urls_are_refused_with_an_example(bad):
    with pytest.raises(ImproperlyConfigured, match="must look like postgres://"):
        ep.parse_database_url({"DATABASE_URL": bad})
