"""The fetch policy: which addresses an image URL may reach, and no credentials taken from URLs.

No packet leaves this machine: fake host names resolve through a patched resolver, and every
socket connect to anything but 127.0.0.1 is recorded and refused, so a policy bug fails the test.
"""
from __future__ import annotations

import socket

import pytest

from phototagger.output import thumbnails
from phototagger.http import ImageFetchError, fetch_image_bytes
from phototagger.prompting.providers import make_provider
from phototagger.ingest.sources.base import SourceError
from phototagger.ingest.sources.unsplash import UnsplashSource
from tests.fakes.image_server import ImageServer

FAKE_DNS = {
    "metadata.test": ["169.254.169.254"],
    "intranet.test": ["10.0.0.1"],
    "mixed.test": ["127.0.0.1", "169.254.169.254"],
}


@pytest.fixture(autouse=True)
def off_host_connects(monkeypatch: pytest.MonkeyPatch):
    """Resolve the fake names above; record and refuse any connect that is not to 127.0.0.1."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    attempts: list[object] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host in FAKE_DNS:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in FAKE_DNS[host]]
        return real_getaddrinfo(host, port, family, type, proto, flags)

    def connect(sock, address):
        if address[0] != "127.0.0.1":
            attempts.append(address)
            raise ConnectionRefusedError(f"test refused a connect to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert attempts == [], f"the fetcher tried to connect off this machine: {attempts}"


@pytest.fixture
def server():
    """Serves /photo.jpg and /redirect?to=<url>; remembers each request's path and Authorization header."""
    with ImageServer() as httpd:
        yield httpd


def refusal(url: str) -> ImageFetchError:
    with pytest.raises(ImageFetchError) as caught:
        fetch_image_bytes(url, timeout_s=2)
    assert caught.value.error_class == "bad_image"
    return caught.value


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/photo.jpg",
        "http://[::ffff:169.254.169.254]/photo.jpg",
        "http://metadata.test/computeMetadata/v1/",
        "https://metadata.test/photo.jpg",
    ],
)
def test_metadata_addresses_are_refused_even_when_private_urls_are_allowed(url):
    assert "metadata" in str(refusal(url))


def test_a_redirect_to_a_metadata_address_is_refused_before_connecting(server):
    assert "metadata" in str(refusal(f"{server.base_url}/redirect?to=http://metadata.test/latest/meta-data/"))
    assert [path for path, _ in server.seen] == ["/redirect?to=http://metadata.test/latest/meta-data/"]


def test_private_and_loopback_addresses_are_refused_unless_the_setting_allows_them(server, monkeypatch):
    monkeypatch.delenv("PHOTOTAGGER_ALLOW_PRIVATE_URLS")
    assert "PHOTOTAGGER_ALLOW_PRIVATE_URLS=1" in str(refusal(f"{server.base_url}/photo.jpg"))
    assert "10.0.0.1" in str(refusal("http://intranet.test/photo.jpg"))
    assert server.seen == []

    monkeypatch.setenv("PHOTOTAGGER_ALLOW_PRIVATE_URLS", "1")
    assert fetch_image_bytes(f"{server.base_url}/photo.jpg", timeout_s=2).startswith(b"\xff\xd8\xff")


def test_a_name_is_refused_when_any_of_its_addresses_is(server):
    assert "169.254.169.254" in str(refusal(f"http://mixed.test:{server.server_port}/photo.jpg"))
    assert server.seen == []


def test_credentials_in_an_image_url_are_never_sent(server):
    port = server.server_port
    message = str(refusal(f"http://user:secret@127.0.0.1:{port}/photo.jpg"))
    assert "credentials" in message and "secret" not in message
    refusal(f"{server.base_url}/redirect?to=http://user:secret@127.0.0.1:{port}/photo.jpg")
    assert [auth for _, auth in server.seen] == [None]


def test_card_thumbnails_knn_features_and_unsplash_share_the_policy(tmp_path):
    assert thumbnails.thumbnail_data_uri("http://metadata.test/photo.jpg", timeout_s=2) is None

    history = [{"id": "h1", "image_url": "http://metadata.test/h1.jpg", "ground_truth_tags": ["sky"]}]
    knn = make_provider("knn", "jec", history=history)
    with pytest.raises(Exception, match="could read none"):
        knn.complete("ignored", "http://metadata.test/query.jpg", photo_id="new")

    with pytest.raises(SourceError, match="fetch policy"):
        UnsplashSource("key", base_url="http://metadata.test").fetch(set(), 1)


def test_a_bare_local_path_is_refused_and_a_folder_photo_is_read_only_inside_its_folder(tmp_path):
    from PIL import Image

    from phototagger.http import LocalImage
    from phototagger.images import photo_image

    with pytest.raises(ImageFetchError, match="local path refused"):
        fetch_image_bytes("/etc/passwd")
    folder = tmp_path / "trip"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "rocket.jpg")
    (folder / "escape.jpg").symlink_to("/etc/passwd")
    own = {"id": "f1", "image_url": str(folder / "rocket.jpg"), "source": "folder", "name": "rocket.jpg"}
    assert fetch_image_bytes(photo_image(own)).startswith(b"\xff\xd8\xff")
    for photo in ({**own, "image_url": "/etc/passwd"},  # its name does not end the path: no folder vouches for it
                  {**own, "image_url": str(folder / "escape.jpg"), "name": "escape.jpg"},  # a link out of the folder
                  {"id": "u1", "image_url": "/etc/passwd", "source": "unsplash-lite"}):  # a dataset row with a bare path
        with pytest.raises(ImageFetchError, match="local path refused"):
            fetch_image_bytes(photo_image(photo))
    with pytest.raises(ImageFetchError, match="outside the folder"):
        fetch_image_bytes(LocalImage(folder / ".." / ".." / "x.jpg", folder))
