"""Photo sources: the Unsplash API (against a local fake), a folder, Unsplash Lite, the demo set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from phototagger.errors import UserError
from phototagger import http
from phototagger.ingest.sources import SourceError, resolve_source
from phototagger.ingest.sources.base import utc_iso
from phototagger.ingest.sources.demo import DemoSource, skimage_data_dir
from phototagger.ingest.sources.folder import FolderSource, folder_photo_id
from phototagger.ingest.sources.unsplash import UnsplashSource
from phototagger.ingest.sources.unsplash_lite import UnsplashLiteSource
from tests.fakes.bomb import bomb_png
from tests.fakes.unsplash_server import FakeUnsplashServer, sample_photos

KEY = "sekret-access-key-123"


@pytest.fixture
def server():
    with FakeUnsplashServer(key=KEY) as fake:
        yield fake


def unsplash(server, mode="latest", query="", **kwargs) -> UnsplashSource:
    kwargs.setdefault("session", http.session(retries=3, backoff=0))
    return UnsplashSource(KEY, mode, query, base_url=server.base_url, **kwargs)


def api_paths(server) -> list[str]:
    return [path for path, _, _ in server.requests]


# -- choosing a source ------------------------------------------------------------------------


def test_auto_is_unsplash_with_a_key_and_demo_without(server):
    assert resolve_source("auto", {"client_id": KEY, "UNSPLASH_API_URL": server.base_url}).name == "unsplash"
    assert resolve_source("auto", {}).name == "demo"
    assert resolve_source("", {"client_id": ""}).name == "demo"


def test_specs_pick_mode_and_value(server, tmp_path):
    env = {"client_id": KEY, "UNSPLASH_API_URL": server.base_url}
    assert resolve_source("unsplash:search:red cars", env).name == "unsplash:search:red cars"
    collection = resolve_source("unsplash:collection:317099", env)
    assert (collection.mode, collection.query, collection.base_url) == ("collection", "317099", server.base_url)
    assert resolve_source(f"folder:{tmp_path}", env).name == f"folder:{tmp_path.resolve()}"


def test_unknown_spec_lists_the_known_ones():
    with pytest.raises(UserError, match="unsplash:search:QUERY.*folder:PATH"):
        resolve_source("flickr:cats", {})


def test_unsplash_api_url_comes_from_the_environment(monkeypatch, server):
    monkeypatch.setenv("UNSPLASH_API_URL", server.base_url + "/")
    assert UnsplashSource(KEY).base_url == server.base_url


# -- Unsplash: records ------------------------------------------------------------------------


def test_latest_photos_carry_normalised_tags_from_the_detail_call(server):
    photos = unsplash(server).fetch(set(), 2)

    assert [p["id"] for p in photos] == ["unsplash-p001", "unsplash-p002"]
    first = photos[0]
    assert first["ground_truth_tags"] == ["dog", "sunset", "tag 1"]
    assert first["tag_provenance"] == {"dog": "user", "sunset": "user", "tag 1": "user"}
    assert first["image_url"] == f"{server.base_url}/images/p001.jpg?size=regular"
    assert first["source"] == "unsplash"
    assert first["created_at"] == "2024-03-02T14:00:00Z"
    assert (first["width"], first["height"], first["photographer"]) == (4000, 3000, "Photographer 1")
    assert first["description"] == "Photo number 1"
    assert "Photographer 1" in first["attribution"]
    assert api_paths(server) == ["/photos", "/photos/p001", "/photos/p002"]
    _, query, headers = server.requests[0]
    assert query["order_by"] == "latest" and headers["accept-version"] == "v1"


def test_beach_with_a_trailing_space_and_mixed_case_is_one_tag(server):
    server.photos = [{"id": "x1", "tags": ["Beach ", "beach", "SUNSET"]}]
    (photo,) = unsplash(server).fetch(set(), 5)
    assert photo["ground_truth_tags"] == ["beach", "sunset"]


def test_alt_description_stands_in_for_a_missing_description(server):
    server.photos = [{"id": "x1", "tags": ["a"], "description": None, "alt_description": "a red car"}]
    (photo,) = unsplash(server).fetch(set(), 5)
    assert photo["description"] == "a red car"


def test_photo_url_is_a_fetchable_image(server):
    (photo,) = unsplash(server).fetch(set(), 1)
    assert http.fetch_image_bytes(photo["image_url"]).startswith(b"\xff\xd8\xff")


# -- Unsplash: listing modes and pagination ---------------------------------------------------


def test_pagination_follows_the_link_header_until_the_batch_is_full(server):
    photos = unsplash(server, per_page=2).fetch(set(), 5)

    assert [p["id"] for p in photos] == [f"unsplash-p00{i}" for i in range(1, 6)]
    pages = [q["page"] for path, q, _ in server.requests if path == "/photos"]
    assert pages == ["1", "2", "3"]


def test_a_full_batch_reads_no_further_page(server):
    unsplash(server, per_page=2).fetch(set(), 4)
    assert [q["page"] for path, q, _ in server.requests if path == "/photos"] == ["1", "2"]


def test_pagination_stops_at_the_last_page(server):
    server.photos = sample_photos(5)
    photos = unsplash(server, per_page=2).fetch(set(), 100)

    assert len(photos) == 5
    assert [q["page"] for path, q, _ in server.requests if path == "/photos"] == ["1", "2", "3"]


def test_pagination_without_link_header_uses_x_total(server):
    server.photos = sample_photos(5)
    server.link_headers = False
    photos = unsplash(server, per_page=2).fetch(set(), 100)

    assert len(photos) == 5
    assert [q["page"] for path, q, _ in server.requests if path == "/photos"] == ["1", "2", "3"]


def test_search_reads_results_and_total_pages(server):
    server.link_headers = False
    photos = unsplash(server, "search", "cat", per_page=1).fetch(set(), 10)

    assert photos and all("cat" in p["ground_truth_tags"] for p in photos)
    searches = [q for path, q, _ in server.requests if path == "/search/photos"]
    assert searches[0]["query"] == "cat"
    assert len(searches) == len(photos)  # one result per page, stopped by total_pages


def test_collection_lists_its_photos(server):
    server.collections["317099"] = ["p003", "p007"]
    photos = unsplash(server, "collection", "317099").fetch(set(), 10)
    assert [p["id"] for p in photos] == ["unsplash-p003", "unsplash-p007"]


def test_unknown_collection_is_a_clear_error(server):
    with pytest.raises(SourceError, match="no collection '42'"):
        unsplash(server, "collection", "42").fetch(set(), 10)


def test_excluded_photos_cost_no_detail_call(server):
    photos = unsplash(server).fetch({"unsplash-p001", "unsplash-p002"}, 2)

    assert [p["id"] for p in photos] == ["unsplash-p003", "unsplash-p004"]
    assert "/photos/p001" not in api_paths(server) and "/photos/p002" not in api_paths(server)


def test_photo_removed_before_its_detail_is_skipped_with_a_note(server):
    source = unsplash(server)
    original = server._answer

    def vanish_p002(path, query):
        return (404, {"errors": ["Couldn't find Photo"]}, {}) if path == "/photos/p002" else original(path, query)

    server._answer = vanish_p002
    photos = source.fetch(set(), 3)
    assert [p["id"] for p in photos] == ["unsplash-p001", "unsplash-p003", "unsplash-p004"]
    assert any("removed from Unsplash" in note for note in source.notes)


# -- Unsplash: rate limits and faults ---------------------------------------------------------


def test_spent_rate_limit_stops_cleanly_with_what_was_fetched(server):
    server.remaining = 4  # one listing page and three details
    source = unsplash(server)
    photos = source.fetch(set(), 10)

    assert len(photos) == 3
    assert len(server.requests) == 4  # stopped on X-Ratelimit-Remaining: 0, no call past the budget
    assert len(source.notes) == 1 and "rate limit" in source.notes[0] and "50 requests an hour" in source.notes[0]


def test_403_rate_limit_exceeded_stops_cleanly(server):
    server.ratelimit_headers = False  # the client cannot see the budget coming
    server.remaining = 3
    source = unsplash(server)
    photos = source.fetch(set(), 10)

    assert len(photos) == 2
    assert "rate limit" in source.notes[0]


def test_no_budget_at_all_gives_an_empty_batch_and_a_note(server):
    server.remaining = 0
    source = unsplash(server)
    assert source.fetch(set(), 10) == []
    assert "stopped after 0 new photos" in source.notes[0]


def test_429_and_503_are_retried_then_succeed(server):
    server.retry_after = "0"
    server.faults = ["rate_limit", "unavailable", "server_error"]
    photos = unsplash(server, session=http.session(retries=3, backoff=0)).fetch(set(), 1)

    assert len(photos) == 1
    assert api_paths(server)[:4] == ["/photos"] * 4


def test_retry_after_from_a_429_is_honoured(server):
    import time

    server.faults = ["rate_limit"]
    server.retry_after = "1"
    start = time.monotonic()
    unsplash(server, session=http.session(retries=2, backoff=0)).fetch(set(), 1)
    assert time.monotonic() - start >= 0.9


def test_persistent_503_is_a_clear_error_after_retries(server):
    server.faults = ["unavailable"] * 3
    with pytest.raises(SourceError, match=r"HTTP 503 after retries \(Service Unavailable\); try again later"):
        unsplash(server, session=http.session(retries=2, backoff=0)).fetch(set(), 1)


def test_persistent_429_stops_like_a_spent_budget(server):
    server.retry_after = "0"
    server.faults = ["rate_limit"] * 3
    source = unsplash(server, session=http.session(retries=2, backoff=0))
    assert source.fetch(set(), 1) == []
    assert "rate limit" in source.notes[0]


def test_an_answer_that_is_not_json_is_a_clear_error(server):
    server.faults = ["non_json"]
    with pytest.raises(SourceError, match="not JSON.*UNSPLASH_API_URL"):
        unsplash(server).fetch(set(), 1)


def test_unreachable_api_is_a_clear_error():
    source = UnsplashSource(KEY, base_url="http://127.0.0.1:9", session=http.session(retries=0))
    with pytest.raises(SourceError, match="Could not reach Unsplash at http://127.0.0.1:9"):
        source.fetch(set(), 1)


# -- Unsplash: the key ------------------------------------------------------------------------


def test_missing_key_names_client_id_and_the_demo():
    with pytest.raises(SourceError, match=r"export client_id=.*--source demo"):
        resolve_source("unsplash", {})


def test_rejected_key_is_a_clear_error_that_does_not_repeat_it(server):
    wrong = "wrong-key-987"
    with pytest.raises(SourceError) as caught:
        UnsplashSource(wrong, base_url=server.base_url).fetch(set(), 1)
    message = str(caught.value)
    assert "rejected the key in client_id" in message and "HTTP 401" in message and "access token is invalid" in message
    assert wrong not in message


def test_key_travels_only_in_the_authorization_header(server, caplog):
    caplog.set_level("DEBUG")
    source = unsplash(server)
    server.remaining = 3
    photos = source.fetch(set(), 5)

    assert all(headers["authorization"] == f"Client-ID {KEY}" for _, _, headers in server.requests)
    assert all(KEY not in path and KEY not in json.dumps(query) for path, query, _ in server.requests)
    assert KEY not in json.dumps(photos) + json.dumps(source.notes) + source.name + caplog.text


def test_error_text_echoing_the_key_is_scrubbed(server):
    original = server._answer
    echo = (400, {"errors": [f"bad client {KEY}"]}, {})
    server._answer = lambda path, query: echo if path == "/photos" else original(path, query)
    with pytest.raises(SourceError) as caught:
        unsplash(server).fetch(set(), 1)
    assert KEY not in str(caught.value) and "bad client ***" in str(caught.value)


# -- folder -----------------------------------------------------------------------------------


def make_image(path: Path, size=(12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def test_folder_reads_tags_json_and_sidecars(tmp_path):
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "trip" / "b.png")
    make_image(tmp_path / "c.webp")
    make_image(tmp_path / "d.jpeg")
    (tmp_path / "tags.json").write_text(json.dumps({"a.jpg": ["Cat", "pet "], "trip/b.png": "sea; sand", "c.webp": ["ignored"]}))
    (tmp_path / "c.webp.txt").write_text("Tree\nforest, green")
    (tmp_path / "d.json").write_text(json.dumps({"tags": ["dog"], "description": "A dog"}))

    photos = {Path(p["image_url"]).name: p for p in FolderSource(str(tmp_path)).fetch(set(), 10)}

    assert photos["a.jpg"]["ground_truth_tags"] == ["cat", "pet"]
    assert photos["b.png"]["ground_truth_tags"] == ["sea", "sand"]
    assert photos["c.webp"]["ground_truth_tags"] == ["tree", "forest", "green"]  # the sidecar wins
    assert photos["d.jpeg"]["ground_truth_tags"] == ["dog"] and photos["d.jpeg"]["description"] == "A dog"
    assert photos["a.jpg"]["id"] == folder_photo_id("a.jpg") and photos["a.jpg"]["id"].startswith("folder-")
    assert (photos["a.jpg"]["width"], photos["a.jpg"]["height"]) == (12, 8)
    assert photos["a.jpg"]["source"] == "folder" and photos["a.jpg"]["tag_provenance"] == {"cat": "user", "pet": "user"}


def test_folder_reads_a_tags_csv(tmp_path):
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "b.jpg")
    (tmp_path / "tags.csv").write_text('filename,tags\na.jpg,"cat;pet;indoor"\nb.jpg,"sea, sand"\n')

    photos = FolderSource(str(tmp_path)).fetch(set(), 10)
    assert [p["ground_truth_tags"] for p in photos] == [["cat", "pet", "indoor"], ["sea", "sand"]]


def test_image_without_tags_is_still_a_photo(tmp_path):
    make_image(tmp_path / "lonely.jpg")
    (photo,) = FolderSource(str(tmp_path)).fetch(set(), 10)
    assert photo["ground_truth_tags"] == [] and photo["tag_provenance"] == {}


def test_folder_ids_survive_moving_the_folder_and_exclusion_skips_them(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_image(tmp_path / "one" / name)
    first = FolderSource(str(tmp_path / "one")).fetch(set(), 2)
    (tmp_path / "one").rename(tmp_path / "two")
    rest = FolderSource(str(tmp_path / "two")).fetch({p["id"] for p in first}, 10)

    assert [Path(p["image_url"]).name for p in first] == ["a.jpg", "b.jpg"]
    assert [Path(p["image_url"]).name for p in rest] == ["c.jpg"]


def test_folder_skips_files_that_are_not_images_with_a_note(tmp_path):
    make_image(tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.md").write_text("ignored")
    source = FolderSource(str(tmp_path))

    assert [Path(p["image_url"]).name for p in source.fetch(set(), 10)] == ["good.jpg"]
    assert "broken.jpg" in source.notes[0]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="Photo folder not found"):
        resolve_source(f"folder:{tmp_path / 'nope'}", {})


def test_malformed_tags_json_is_a_clear_error(tmp_path):
    make_image(tmp_path / "a.jpg")
    (tmp_path / "tags.json").write_text("{not json")
    with pytest.raises(SourceError, match="tags.json is not valid JSON"):
        FolderSource(str(tmp_path)).fetch(set(), 10)


def test_decompression_bomb_is_skipped_with_a_note_and_the_rest_delivered(tmp_path):
    make_image(tmp_path / "a.jpg")
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    make_image(tmp_path / "c.jpg")
    source = FolderSource(str(tmp_path))

    assert [Path(p["image_url"]).name for p in source.fetch(set(), 10)] == ["a.jpg", "c.jpg"]
    assert len(source.notes) == 1 and "too large to decode safely" in source.notes[0] and "bomb.png" in source.notes[0]


def test_link_to_a_file_outside_the_folder_is_refused_with_a_note(tmp_path):
    secret = make_image(tmp_path / "private" / "secret.jpg")
    folder = tmp_path / "photos"
    make_image(folder / "a.jpg")
    (folder / "leak.jpg").symlink_to(secret)
    (folder / "alias.jpg").symlink_to(folder / "a.jpg")  # a link that stays inside is fine
    source = FolderSource(str(folder))

    assert sorted(Path(p["image_url"]).name for p in source.fetch(set(), 10)) == ["a.jpg", "alias.jpg"]
    assert "Refused 1 links to files outside" in source.notes[0] and "leak.jpg" in source.notes[0]


def test_tags_json_entries_that_are_not_lists_are_noted_per_photo(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        make_image(tmp_path / name)
    (tmp_path / "tags.json").write_text(json.dumps(
        {"a.jpg": {"tags": ["cat"]}, "b.jpg": 42, "c.jpg": ["dog", {"x": 1}], "d.jpg": ["sea"]}
    ))
    source = FolderSource(str(tmp_path))

    photos = {Path(p["image_url"]).name: p["ground_truth_tags"] for p in source.fetch(set(), 10)}
    assert photos == {"a.jpg": [], "b.jpg": [], "c.jpg": [], "d.jpg": ["sea"]}
    assert source.notes == [
        "a.jpg has no ground truth: its tags.json entry 'a.jpg' is an object, not a list of tags (write [\"tag\", ...] or \"tag; tag\").",
        "b.jpg has no ground truth: its tags.json entry 'b.jpg' is a number, not a list of tags (write [\"tag\", ...] or \"tag; tag\").",
        "c.jpg has no ground truth: its tags.json entry 'c.jpg' is a list holding non-text items, not a list of tags (write [\"tag\", ...] or \"tag; tag\").",
    ]


def test_sidecar_whose_tags_are_not_a_list_is_noted(tmp_path):
    make_image(tmp_path / "a.jpg")
    (tmp_path / "a.json").write_text(json.dumps({"tags": {"cat": 1}}))
    source = FolderSource(str(tmp_path))

    assert source.fetch(set(), 10)[0]["ground_truth_tags"] == []
    assert source.notes[0].startswith('a.jpg has no ground truth: "tags" in its sidecar a.json is an object')


# -- Unsplash Lite ----------------------------------------------------------------------------

PHOTO_COLUMNS = (
    "photo_id\tphoto_url\tphoto_image_url\tphoto_submitted_at\tphoto_featured\tphoto_width\tphoto_height\t"
    "photo_aspect_ratio\tphoto_description\tphotographer_username\tphotographer_first_name\t"
    "photographer_last_name\tai_description"
)
KEYWORD_COLUMNS = "photo_id\tkeyword\tai_service_1_confidence\tai_service_2_confidence\tsuggested_by_user"


def photo_row(pid: str, description: str = "") -> str:
    return "\t".join(
        [pid, f"https://unsplash.com/photos/{pid}", f"https://images.unsplash.com/photo-{pid}", "2020-05-12 17:17:01.442",
         "t", "4000", "3000", "1.33", description, "ann", "Ann", "Lee", f"ai text for {pid}"]
    )


@pytest.fixture
def lite(tmp_path):
    (tmp_path / "photos.tsv000").write_text("\n".join([PHOTO_COLUMNS, photo_row("AAA", "A beach"), photo_row("BBB")]) + "\n")
    (tmp_path / "photos.tsv001").write_text("\n".join([PHOTO_COLUMNS, photo_row("CCC")]) + "\n")
    keywords = [
        "AAA\tBeach\t\t\tt",
        "AAA\tsea\t87.23\t55.0\tf",
        "AAA\tblur\t12.5\t\tf",
        "AAA\tbeach\t90.0\t\tf",
        "BBB\tdog\t\t\tt",
        "CCC\ttree\t\t64.0\tf",
        "ZZZ\tnot chosen\t\t\tt",
    ]
    (tmp_path / "keywords.tsv000").write_text("\n".join([KEYWORD_COLUMNS, *keywords[:4]]) + "\n")
    (tmp_path / "keywords.tsv001").write_text("\n".join([KEYWORD_COLUMNS, *keywords[4:]]) + "\n")
    return tmp_path


def test_lite_keeps_each_tags_provenance(lite):
    photos = UnsplashLiteSource(str(lite)).fetch(set(), 10)

    assert [p["id"] for p in photos] == ["unsplash-AAA", "unsplash-BBB", "unsplash-CCC"]
    first = photos[0]
    assert first["ground_truth_tags"] == ["beach", "sea", "blur"]
    assert first["tag_provenance"] == {"beach": "user", "sea": "ai:87.2", "blur": "ai:12.5"}
    assert first["image_url"] == "https://images.unsplash.com/photo-AAA"
    assert first["created_at"] == "2020-05-12T17:17:01Z"
    assert (first["width"], first["height"], first["photographer"]) == (4000, 3000, "Ann Lee")
    assert first["description"] == "A beach" and photos[1]["description"] == "ai text for BBB"
    assert first["source"] == "unsplash-lite"
    assert photos[2]["tag_provenance"] == {"tree": "ai:64.0"}  # split keyword files read in order


def test_lite_filters_by_confidence_or_to_user_tags(lite):
    confident = resolve_source(f"unsplash-lite:{lite}?min_confidence=50", {})
    assert confident.fetch(set(), 1)[0]["ground_truth_tags"] == ["beach", "sea"]
    assert "Dropped 1 AI keywords" in confident.notes[0]
    assert confident.name.endswith("?min_confidence=50")

    humans = resolve_source(f"unsplash-lite:{lite}?user_only=1", {})
    assert [p["ground_truth_tags"] for p in humans.fetch(set(), 10)] == [["beach"], ["dog"], []]


def test_lite_excludes_seen_photos_and_honours_the_limit(lite):
    photos = UnsplashLiteSource(str(lite)).fetch({"unsplash-AAA"}, 1)
    assert [p["id"] for p in photos] == ["unsplash-BBB"]


def test_lite_without_its_files_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match=r"No photos.tsv\* files.*unsplash.com/data"):
        resolve_source(f"unsplash-lite:{tmp_path}", {})


def test_lite_unknown_option_is_an_error(lite):
    with pytest.raises(UserError, match="unknown unsplash-lite option 'colour'"):
        resolve_source(f"unsplash-lite:{lite}?colour=red", {})


def test_lite_line_that_is_not_utf8_is_a_clear_error_naming_file_and_line(lite):
    (lite / "photos.tsv001").write_bytes(f"{PHOTO_COLUMNS}\n".encode() + photo_row("CCC", "caf\xe9").encode("latin-1") + b"\n")
    with pytest.raises(SourceError, match=r"photos.tsv001 line 2 is not valid UTF-8 \(byte 0xe9"):
        UnsplashLiteSource(str(lite)).fetch(set(), 10)


def test_lite_unclosed_quote_is_an_error_not_one_long_description(lite):
    closed = [PHOTO_COLUMNS, photo_row("AAA", '"A beach\nat dawn"'), photo_row("BBB")]
    (lite / "photos.tsv000").write_text("\n".join(closed) + "\n")
    photos = UnsplashLiteSource(str(lite)).fetch(set(), 10)
    assert photos[0]["description"] == "A beach\nat dawn" and len(photos) == 3  # a quoted field may span lines

    unclosed = [PHOTO_COLUMNS, photo_row("AAA", '"A beach'), photo_row("BBB"), photo_row("CCC")]
    (lite / "photos.tsv000").write_text("\n".join(unclosed) + "\n")
    with pytest.raises(SourceError, match=r"photos.tsv000 lines 2-4 read as one row .* quote"):
        UnsplashLiteSource(str(lite)).fetch(set(), 10)


def test_lite_part_without_its_header_is_read_with_the_previous_header_and_noted(lite):
    (lite / "photos.tsv001").write_text(photo_row("CCC") + "\n" + photo_row("DDD") + "\n")
    source = UnsplashLiteSource(str(lite))

    assert [p["id"] for p in source.fetch(set(), 10)] == ["unsplash-AAA", "unsplash-BBB", "unsplash-CCC", "unsplash-DDD"]
    assert source.notes == ["photos.tsv001 has no header row: read with the header of the part before it."]


def test_lite_first_part_without_a_header_is_a_clear_error(lite):
    (lite / "photos.tsv000").write_text(photo_row("AAA") + "\n")
    with pytest.raises(SourceError, match=r"photos.tsv000 line 1 is not a header row"):
        UnsplashLiteSource(str(lite)).fetch(set(), 10)


def test_lite_rows_without_a_photo_id_are_counted_in_a_note(lite):
    (lite / "photos.tsv001").write_text("\n".join([PHOTO_COLUMNS, photo_row(""), photo_row("CCC")]) + "\n")
    (lite / "keywords.tsv001").write_text("\n".join([KEYWORD_COLUMNS, "CCC\ttree\t\t64.0\tf", " \tlost\t\t\tt"]) + "\n")
    source = UnsplashLiteSource(str(lite))

    assert [p["id"] for p in source.fetch(set(), 10)] == ["unsplash-AAA", "unsplash-BBB", "unsplash-CCC"]
    assert source.notes == ["Skipped 2 rows with an empty photo_id: photos.tsv001 line 2, keywords.tsv001 line 3."]


# -- demo -------------------------------------------------------------------------------------


def test_demo_delivers_its_photos_in_two_stable_batches():
    source = resolve_source("demo", {})
    first = source.fetch(set(), source.default_batch_size)
    second = source.fetch({p["id"] for p in first}, source.default_batch_size)
    third = source.fetch({p["id"] for p in first + second}, source.default_batch_size)

    assert len(first) + len(second) >= 16 and len(first) == source.default_batch_size
    assert third == []
    assert [p["id"] for p in first] == [p["id"] for p in DemoSource().fetch(set(), source.default_batch_size)]
    assert first[0]["id"] == "demo-chelsea"


def test_demo_photos_are_real_files_with_honest_tags_and_credits():
    photos = DemoSource().fetch(set(), 100)
    data_dir = skimage_data_dir()

    for photo in photos:
        assert Path(photo["image_url"]).parent == data_dir and Path(photo["image_url"]).is_file()
        assert 5 <= len(photo["ground_truth_tags"]) <= 10, photo["id"]
        assert photo["attribution"] and photo["description"] and photo["width"] and photo["height"]
        assert photo["source"] == "demo" and photo["id"].startswith("demo-")
    assert {"cat", "pet", "animal"} <= set(next(p for p in photos if p["id"] == "demo-chelsea")["ground_truth_tags"])


# -- shared helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2016-05-03T11:00:28-04:00", "2016-05-03T15:00:28Z"),
        ("2020-05-12 17:17:01.442", "2020-05-12T17:17:01Z"),
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
        (0, "1970-01-01T00:00:00Z"),
        ("", ""),
    ],
)
def test_timestamps_become_iso_utc(value, expected):
    assert utc_iso(value) == expected
