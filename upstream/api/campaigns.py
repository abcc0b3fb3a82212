"""/api/campaigns: list (keyset), create, read, update, delete (admin), and add calls."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from upstream.api.auth_routes import require_admin
from upstream.api.keys import SESSIONS
from upstream.api.pages import keyset_page
from upstream.api.validation import (
    PHONE,
    check_fields,
    choice,
    json_object,
    path_id,
    query_int,
    string,
)
from upstream.events import notify
from upstream.models import CAMPAIGN_STATUSES, Call, Campaign
from upstream.problems import Problem, ValidationProblem

PAGE_DEFAULT, PAGE_MAX = 50, 100


def campaign_json(c: Campaign) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "status": c.status,
            "created_at": c.created_at.isoformat(), "updated_at": c.updated_at.isoformat()}


def call_json(c: Call) -> dict[str, Any]:
    return {"id": c.id, "campaign_id": c.campaign_id, "phone_number": c.phone_number,
            "status": c.status, "duration_s": c.duration_s,
            "started_at": c.started_at.isoformat() if c.started_at else None,
            "ended_at": c.ended_at.isoformat() if c.ended_at else None}


def _name_taken() -> Problem:
    return Problem(409, "A campaign with this name already exists.")


async def list_campaigns(request: web.Request) -> web.Response:
    errors: dict[str, str] = {}
    limit = query_int(request, "limit", errors, default=PAGE_DEFAULT, maximum=PAGE_MAX)
    after = query_int(request, "cursor", errors, default=0, minimum=0)
    status = request.query.get("status")
    if status is not None and status not in CAMPAIGN_STATUSES:
        errors["status"] = "must be one of " + ", ".join(CAMPAIGN_STATUSES)
    if errors:
        raise ValidationProblem(errors)
    query = select(Campaign).where(Campaign.id > after).order_by(Campaign.id).limit(limit + 1)
    if status:
        query = query.where(Campaign.status == status)
    return await keyset_page(request, query, limit, campaign_json)


async def create_campaign(request: web.Request) -> web.Response:
    body = await json_object(request)
    errors: dict[str, str] = {}
    check_fields(body, {"name", "status"}, errors)
    name = string(body, "name", errors, required=True)
    status = choice(body, "status", CAMPAIGN_STATUSES, errors) or "draft"
    if errors:
        raise ValidationProblem(errors)
    async with request.app[SESSIONS]() as session:
        campaign = Campaign(name=name, status=status)
        session.add(campaign)
        try:
            await session.commit()
        except IntegrityError:
            raise _name_taken() from None
        await session.refresh(campaign)
    return web.json_response(campaign_json(campaign), status=201,
                             headers={"Location": f"/api/campaigns/{campaign.id}"})


async def _campaign(session, campaign_id: int, *, lock: bool = False) -> Campaign:
    query = select(Campaign).where(Campaign.id == campaign_id)
    campaign = (await session.execute(query.with_for_update() if lock else query)
                ).scalar_one_or_none()
    if campaign is None:
        raise Problem(404, f"No campaign {campaign_id}.")
    return campaign


async def get_campaign(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        return web.json_response(campaign_json(await _campaign(session, path_id(request))))


async def update_campaign(request: web.Request) -> web.Response:
    campaign_id = path_id(request)
    body = await json_object(request)
    errors: dict[str, str] = {}
    check_fields(body, {"name", "status"}, errors)
    name = string(body, "name", errors, required=False)
    status = choice(body, "status", CAMPAIGN_STATUSES, errors)
    if not body and not errors:
        errors["body"] = "name or status is required"
    if errors:
        raise ValidationProblem(errors)
    async with request.app[SESSIONS]() as session:
        campaign = await _campaign(session, campaign_id, lock=True)
        if name is not None:
            campaign.name = name
        if status is not None:
            campaign.status = status
        campaign.updated_at = func.now()
        try:
            await session.commit()
        except IntegrityError:
            raise _name_taken() from None
        await session.refresh(campaign)
        return web.json_response(campaign_json(campaign))


async def delete_campaign(request: web.Request) -> web.Response:
    require_admin(request)
    campaign_id = path_id(request)
    async with request.app[SESSIONS]() as session:
        await session.delete(await _campaign(session, campaign_id, lock=True))
        await session.commit()
    return web.Response(status=204)


async def add_call(request: web.Request) -> web.Response:
    campaign_id = path_id(request)
    body = await json_object(request)
    errors: dict[str, str] = {}
    check_fields(body, {"phone_number"}, errors)
    phone = string(body, "phone_number", errors, required=True, max_len=32)
    if phone is not None and not PHONE.match(phone):
        errors["phone_number"] = "must be 6 to 15 digits, optionally after a +"
    if errors:
        raise ValidationProblem(errors)
    async with request.app[SESSIONS]() as session:
        campaign = await _campaign(session, campaign_id, lock=True)
        if campaign.status == "completed":
            raise Problem(409, f"Campaign {campaign_id} is completed: it takes no new calls.")
        call = Call(campaign_id=campaign_id, phone_number=phone, status="queued")
        session.add(call)
        await session.flush()
        await session.refresh(call)
        await notify(session, "call.created", call_json(call))
        await session.commit()
    return web.json_response(call_json(call), status=201,
                             headers={"Location": f"/api/calls/{call.id}"})
