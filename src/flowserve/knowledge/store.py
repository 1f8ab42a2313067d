"""The knowledge tables' reads and writes (flowserve.knowledge.models).

Every read of a KB names its org (and kind): another org's KB, or a documents bucket on a KB
route, is the same NotFoundError as an unknown id. Indexing writes are conditional on the
file's ``generation``, so an indexing made stale by a newer upload, a parameter change or a
deletion writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from flowserve.errors import NotFoundError
from flowserve.knowledge.chunking import Chunk
from flowserve.knowledge.models import KB, KbChunk, KbFile, KbPage, KnowledgeBase
from flowserve.store.database import Database, utcnow
from flowserve.store.models import Instance

PENDING, PARSED, INDEXED, ERROR = "pending", "parsed", "indexed", "error"
KB_NOT_FOUND = "knowledge base not found"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def aware(t: datetime) -> datetime:
    """SQLite gives back naive datetimes for timezone-aware columns (they hold UTC)."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def encode_cursor(created_at: datetime, row_id: str) -> str:
    micros = (aware(created_at) - EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(orjson.dumps([micros, row_id])).rstrip(b"=").decode()


def decode_cursor(text: str) -> tuple[datetime, str]:
    """ValueError for anything that is not a cursor this module made."""
    try:
        micros, row_id = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if type(micros) is not int or not isinstance(row_id, str) or not 0 < len(row_id) <= 36:
            raise ValueError
        return EPOCH + timedelta(microseconds=micros), row_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError, OverflowError):
        raise ValueError("not a cursor given by this server") from None


@dataclass(frozen=True, slots=True)
class Counts:
    files: int = 0
    size: int = 0
    indexed: int = 0
    errors: int = 0


def _page(query: Any, table: Any, cursor: tuple[datetime, str] | None, forward: bool) -> Any:
    """Newest first; ``forward`` (direction next) walks to older rows, else to newer."""
    if cursor is not None:
        at, row_id = cursor[0].astimezone(UTC), cursor[1]
        if forward:
            query = query.where(
                or_(table.created_at < at, and_(table.created_at == at, table.id < row_id))
            )
        else:
            query = query.where(
                or_(table.created_at > at, and_(table.created_at == at, table.id > row_id))
            )
    if forward:
        return query.order_by(table.created_at.desc(), table.id.desc())
    return query.order_by(table.created_at.asc(), table.id.asc())


class KnowledgeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # knowledge bases and buckets

    async def add_kb(self, row: KnowledgeBase) -> None:
        async with self.db.session() as s:
            s.add(row)

    async def get_kb(self, org_id: str, kb_id: str, kind: str = KB) -> KnowledgeBase:
        async with self.db.session() as s:
            row = await s.scalar(
                select(KnowledgeBase).where(
                    KnowledgeBase.id == kb_id,
                    KnowledgeBase.org_id == org_id,
                    KnowledgeBase.kind == kind,
                )
            )
        if row is None:
            raise NotFoundError(KB_NOT_FOUND)
        return row

    async def list_kbs(
        self, org_id: str, cursor: tuple[datetime, str] | None, forward: bool, limit: int
    ) -> list[KnowledgeBase]:
        query = select(KnowledgeBase).where(
            KnowledgeBase.org_id == org_id, KnowledgeBase.kind == KB
        )
        async with self.db.session() as s:
            rows = list(
                (await s.scalars(_page(query, KnowledgeBase, cursor, forward).limit(limit))).all()
            )
        return rows if forward else rows[::-1]

    async def counts(self, kb_ids: Sequence[str]) -> dict[str, Counts]:
        if not kb_ids:
            return {}
        query = (
            select(
                KbFile.kb_id, KbFile.status, func.count(), func.coalesce(func.sum(KbFile.size), 0)
            )
            .where(KbFile.kb_id.in_(kb_ids))
            .group_by(KbFile.kb_id, KbFile.status)
        )
        totals: dict[str, list[int]] = {}
        async with self.db.session() as s:
            for kb_id, status, count, size in (await s.execute(query)).all():
                entry = totals.setdefault(kb_id, [0, 0, 0, 0])
                entry[0] += count
                entry[1] += int(size)
                entry[2] += count if status == INDEXED else 0
                entry[3] += count if status == ERROR else 0
        return {kb_id: Counts(*values) for kb_id, values in totals.items()}

    async def save_kb(self, row: KnowledgeBase, **values: Any) -> KnowledgeBase:
        async with self.db.session() as s:
            await s.execute(
                update(KnowledgeBase).where(KnowledgeBase.id == row.id).values(**values)
            )
            fresh = await s.get(KnowledgeBase, row.id, populate_existing=True)
        if fresh is None:
            raise NotFoundError(KB_NOT_FOUND)
        return fresh

    async def delete_kb(self, kb_id: str) -> list[str]:
        """Delete the KB with its files, pages and chunks; the content hashes it held."""
        async with self.db.session() as s:
            files = select(KbFile.id).where(KbFile.kb_id == kb_id)
            hashes = list(
                (await s.scalars(select(KbFile.content_hash).where(KbFile.kb_id == kb_id))).all()
            )
            await s.execute(delete(KbChunk).where(KbChunk.kb_id == kb_id))
            await s.execute(delete(KbPage).where(KbPage.file_id.in_(files)))
            await s.execute(delete(KbFile).where(KbFile.kb_id == kb_id))
            await s.execute(delete(KnowledgeBase).where(KnowledgeBase.id == kb_id))
        return hashes

    async def find_bucket(
        self, org_id: str, flow_id: str, node_id: str, user_id: str
    ) -> KnowledgeBase | None:
        async with self.db.session() as s:
            return await s.scalar(
                select(KnowledgeBase).where(
                    KnowledgeBase.org_id == org_id,
                    KnowledgeBase.flow_id == flow_id,
                    KnowledgeBase.node_id == node_id,
                    KnowledgeBase.user_id == user_id,
                )
            )

    async def add_bucket(self, row: KnowledgeBase) -> KnowledgeBase:
        """Add a bucket, or return the one another request added at the same time."""
        try:
            await self.add_kb(row)
            return row
        except IntegrityError:
            assert row.flow_id and row.node_id and row.user_id
            found = await self.find_bucket(row.org_id, row.flow_id, row.node_id, row.user_id)
            if found is None:
                raise
            return found

    # files

    async def put_file(
        self, kb_id: str, name: str, digest: str, mime: str, parser: str, size: int, owner: str
    ) -> tuple[str, bool, str | None]:
        """Add or replace the file called ``name``: (its id, whether it changed, the content
        hash it replaced). The same bytes under the same name change nothing."""
        for attempt in range(2):
            try:
                return await self._put_file(kb_id, name, digest, mime, parser, size, owner)
            except IntegrityError:  # the same name added at the same moment: replace it
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _put_file(
        self, kb_id: str, name: str, digest: str, mime: str, parser: str, size: int, owner: str
    ) -> tuple[str, bool, str | None]:
        now = utcnow()
        async with self.db.session() as s:
            row = await s.scalar(
                select(KbFile).where(KbFile.kb_id == kb_id, KbFile.resource_path == name)
            )
            if row is not None and row.content_hash == digest:
                return row.id, False, None
            if row is None:
                file_id = str(uuid.uuid4())
                s.add(
                    KbFile(
                        id=file_id,
                        kb_id=kb_id,
                        resource_path=name,
                        content_hash=digest,
                        content_mime=mime,
                        parser=parser,
                        size=size,
                        status=PENDING,
                        dataloader_metadata={},
                        user_metadata={},
                        generation=0,
                        owner=owner,
                        created_at=now,
                        modified_at=now,
                    )
                )
                await s.flush()
                return file_id, True, None
            # New content under the same name: the old text leaves search now.
            await s.execute(delete(KbChunk).where(KbChunk.file_id == row.id))
            await s.execute(delete(KbPage).where(KbPage.file_id == row.id))
            old = row.content_hash
            await s.execute(
                update(KbFile)
                .where(KbFile.id == row.id)
                .values(
                    content_hash=digest,
                    content_mime=mime,
                    parser=parser,
                    size=size,
                    status=PENDING,
                    error=None,
                    dataloader_metadata={},
                    generation=KbFile.generation + 1,
                    owner=owner,
                    modified_at=now,
                    indexed_at=None,
                )
            )
            return row.id, True, old

    async def list_files(
        self, kb_id: str, cursor: tuple[datetime, str] | None, forward: bool, limit: int
    ) -> list[KbFile]:
        query = select(KbFile).where(KbFile.kb_id == kb_id)
        async with self.db.session() as s:
            rows = list((await s.scalars(_page(query, KbFile, cursor, forward).limit(limit))).all())
        return rows if forward else rows[::-1]

    async def all_files(self, kb_id: str) -> list[KbFile]:
        """Oldest first."""
        async with self.db.session() as s:
            query = select(KbFile).where(KbFile.kb_id == kb_id)
            return list((await s.scalars(query.order_by(KbFile.created_at, KbFile.id))).all())

    async def file_and_kb(self, file_id: str) -> tuple[KbFile, KnowledgeBase] | None:
        async with self.db.session() as s:
            found = (
                await s.execute(
                    select(KbFile, KnowledgeBase)
                    .join(KnowledgeBase, KnowledgeBase.id == KbFile.kb_id)
                    .where(KbFile.id == file_id)
                )
            ).first()
        return None if found is None else (found[0], found[1])

    async def get_file(self, kb_id: str, file_id: str) -> KbFile:
        async with self.db.session() as s:
            row = await s.scalar(select(KbFile).where(KbFile.id == file_id, KbFile.kb_id == kb_id))
        if row is None:
            raise NotFoundError("resource not found")
        return row

    async def file_named(self, kb_id: str, name: str) -> KbFile:
        async with self.db.session() as s:
            row = await s.scalar(
                select(KbFile).where(KbFile.kb_id == kb_id, KbFile.resource_path == name)
            )
        if row is None:
            raise NotFoundError(f"file {name[:300]!r} not found")
        return row

    async def delete_file(self, file_id: str) -> None:
        async with self.db.session() as s:
            await s.execute(delete(KbChunk).where(KbChunk.file_id == file_id))
            await s.execute(delete(KbPage).where(KbPage.file_id == file_id))
            await s.execute(delete(KbFile).where(KbFile.id == file_id))

    async def hash_in_use(self, digest: str) -> bool:
        async with self.db.session() as s:
            found = await s.scalar(select(KbFile.id).where(KbFile.content_hash == digest).limit(1))
        return found is not None

    async def requeue(self, kb_id: str, owner: str, only_unindexed: bool) -> list[str]:
        """Put the KB's files (those not indexed, or all) back to pending, owned by
        ``owner``; their ids."""
        query = update(KbFile).where(KbFile.kb_id == kb_id)
        if only_unindexed:
            query = query.where(KbFile.status != INDEXED)
        query = query.values(
            status=PENDING, error=None, generation=KbFile.generation + 1, owner=owner
        )
        async with self.db.session() as s:
            return list((await s.scalars(query.returning(KbFile.id))).all())

    async def claim_orphans(self, owner: str) -> list[str]:
        """Take over the files left pending or parsed by processes that are gone."""
        async with self.db.session() as s:
            result = await s.scalars(
                update(KbFile)
                .where(
                    KbFile.status.in_((PENDING, PARSED)),
                    or_(KbFile.owner.is_(None), KbFile.owner.not_in(select(Instance.id))),
                )
                .values(owner=owner)
                .returning(KbFile.id)
            )
            return list(result.all())

    async def mark(self, file_id: str, generation: int, **values: Any) -> bool:
        async with self.db.session() as s:
            result = await s.execute(
                update(KbFile)
                .where(KbFile.id == file_id, KbFile.generation == generation)
                .values(modified_at=utcnow(), **values)
            )
        return bool(getattr(result, "rowcount", 0))

    async def write_index(
        self,
        file: KbFile,
        chunks: Sequence[Chunk],
        pages: Sequence[tuple[int | None, int, str]],
        metadata: dict[str, Any],
    ) -> bool:
        """Swap in the file's new pages and chunks and mark it indexed, in one transaction,
        if it is still at the generation that was indexed. Whether it was."""
        now = utcnow()
        async with self.db.session() as s:
            result = await s.execute(
                update(KbFile)
                .where(KbFile.id == file.id, KbFile.generation == file.generation)
                .values(
                    status=INDEXED,
                    error=None,
                    dataloader_metadata=metadata,
                    indexed_at=now,
                    modified_at=now,
                )
            )
            if not getattr(result, "rowcount", 0):
                return False
            await s.execute(delete(KbChunk).where(KbChunk.file_id == file.id))
            await s.execute(delete(KbPage).where(KbPage.file_id == file.id))
            s.add_all(
                KbPage(file_id=file.id, seq=seq, page=page, char_start=start, text=text)
                for seq, (page, start, text) in enumerate(pages)
            )
            s.add_all(
                KbChunk(
                    file_id=file.id,
                    kb_id=file.kb_id,
                    chunk_index=c.index,
                    text=c.text,
                    heading=c.heading_path,
                    page=c.page,
                    char_start=c.start,
                    char_end=c.end,
                )
                for c in chunks
            )
        return True

    async def pages(self, file_ids: Sequence[str]) -> dict[str, list[KbPage]]:
        """The files' text by page, in order."""
        found: dict[str, list[KbPage]] = {}
        if not file_ids:
            return found
        async with self.db.session() as s:
            query = select(KbPage).where(KbPage.file_id.in_(file_ids)).order_by(KbPage.seq)
            for row in (await s.scalars(query)).all():
                found.setdefault(row.file_id, []).append(row)
        return found

    async def pending_left(self, kb_id: str) -> int:
        async with self.db.session() as s:
            count = await s.scalar(
                select(func.count())
                .select_from(KbFile)
                .where(KbFile.kb_id == kb_id, KbFile.status.in_((PENDING, PARSED)))
            )
        return int(count or 0)
