"""fs.store: a batch put that races with gc (a duplicate it skipped vanished) still stores everything."""

from __future__ import annotations

from pathlib import Path

from fs.digest import sha256_digest
from fs.store import Store


def test_put_many_retries_when_a_skipped_duplicate_was_collected(tmp_path: Path, monkeypatch) -> None:
    new, vanished = b"new chunk" * 100, b"collected meanwhile" * 100
    with Store.open(tmp_path / "store") as store:
        blobs = store._blobs
        real_has = blobs.has
        lie_once = {sha256_digest(vanished)}

        def has(digest: str) -> bool:  # "already stored" when we look, gone when we publish (a gc ran)
            if digest in lie_once:
                lie_once.discard(digest)
                return True
            return real_has(digest)

        monkeypatch.setattr(blobs, "has", has)
        digests = store.put_many([(new, None), (vanished, None)])
        assert digests == [sha256_digest(new), sha256_digest(vanished)]
        assert store.pread(digests[0], 0, len(new)) == new
        assert store.pread(digests[1], 0, len(vanished)) == vanished
        assert not any((tmp_path / "store" / "wip").iterdir())
