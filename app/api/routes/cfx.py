"""The CFX outbox's state, for an administrator: is every verdict reaching the broker?"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import AdminAuth, RecordsDep
from app.api.openapi import error_responses
from app.services.records_service import RecordsService, read_records

router = APIRouter(prefix="/v1/admin/cfx", tags=["admin"], dependencies=[AdminAuth])


class CfxOutboxStatus(BaseModel):
    """The outbox (shared by the replicas of one database) and this replica's publisher."""

    enabled: bool = Field(description="Whether PCB_CFX_BROKER_URL is set on this replica.")
    broker: str | None = Field(None, description="The broker, without credentials.")
    address: str | None = None
    connected: bool = Field(False, description="This replica holds a broker connection.")
    pending: int = Field(0, description="Messages not yet accepted by the broker.")
    oldest_pending_at: dt.datetime | None = None
    oldest_pending_age_s: float | None = Field(
        None, description="How long the oldest unsent message has waited (s).")
    last_sent_at: dt.datetime | None = Field(
        None, description="When the broker last accepted a message (any replica).")
    published: int = Field(0, description="Messages this replica published since it started.")
    last_error: str | None = Field(
        None, description="This replica's last publishing error, else the one recorded on "
        "the oldest unsent message.")
    last_error_at: dt.datetime | None = None


def _status(records: RecordsService) -> CfxOutboxStatus:
    publisher = records.cfx
    if publisher is None:
        return CfxOutboxStatus(enabled=False)
    state = publisher.outbox.state()
    mine = publisher.status()
    now = dt.datetime.now(dt.UTC)
    return CfxOutboxStatus(
        enabled=True, broker=mine.broker, address=mine.address, connected=mine.connected,
        pending=state.pending, oldest_pending_at=state.oldest_pending_at,
        oldest_pending_age_s=None if state.oldest_pending_at is None
        else round((now - state.oldest_pending_at).total_seconds(), 3),
        last_sent_at=state.last_sent_at, published=mine.published,
        last_error=mine.last_error or state.last_error, last_error_at=mine.last_error_at,
    )


@router.get("", summary="The CFX outbox: pending messages, oldest age, last error, last sent",
            response_model=CfxOutboxStatus, responses=error_responses(401, 403, 404, 500))
async def get_cfx_status(records: RecordsDep) -> CfxOutboxStatus:
    """What waits to be published to the CFX broker and how the publishing goes."""
    return await read_records(_status, records)
