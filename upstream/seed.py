"""Demo data (`python -m upstream seed`): users, campaigns and calls, idempotent.

Users are only created when missing (an existing user keeps its password); campaigns are keyed
by their unique name and their calls are added only with a new campaign. The demo credentials
(admin / admin-password, operator / operator-password) are for development: in production the
seed creates no users (use `python -m upstream users add`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from upstream import db
from upstream.auth import hash_password
from upstream.models import Call, Campaign, User

DEMO_USERS = (("admin", "admin-password", "admin"), ("operator", "operator-password", "operator"))
DEMO_CAMPAIGNS = (
    ("Spring outreach", "active", (("+14155550101", "completed", 182),
                                   ("+14155550102", "in_progress", None),
                                   ("+14155550103", "queued", None))),
    ("Renewals", "paused", (("+442071838750", "no_answer", None),
                            ("+442071838751", "completed", 95))),
    ("Winter follow-up", "draft", ()),
)


async def add_user(session: AsyncSession, username: str, password: str, role: str) -> bool:
    """Create a user; False when the name is taken."""
    if (await session.execute(select(User.id).where(User.username == username))).first():
        return False
    session.add(User(username=username, password_hash=hash_password(password), role=role))
    return True


async def seed(url: str, *, users: bool = True) -> dict[str, int]:
    """Load the demo data; returns how many rows of each kind were added."""
    engine = db.make_engine(url, pool_size=1)
    added = {"users": 0, "campaigns": 0, "calls": 0}
    now = datetime.now(UTC)
    try:
        async with async_sessionmaker(engine)() as session:
            if users:
                for username, password, role in DEMO_USERS:
                    added["users"] += await add_user(session, username, password, role)
            for name, status, calls in DEMO_CAMPAIGNS:
                if (await session.execute(select(Campaign.id).where(Campaign.name == name))
                        ).first():
                    continue
                campaign = Campaign(name=name, status=status)
                session.add(campaign)
                await session.flush()
                added["campaigns"] += 1
                for i, (phone, call_status, duration) in enumerate(calls):
                    started = now - timedelta(minutes=30 - i)
                    session.add(Call(
                        campaign_id=campaign.id, phone_number=phone, status=call_status,
                        duration_s=duration,
                        started_at=started if call_status in ("completed", "in_progress")
                        else None,
                        ended_at=started + timedelta(seconds=duration) if duration else None))
                    added["calls"] += 1
            await session.commit()
    finally:
        await engine.dispose()
    return added


async def create_user(url: str, username: str, password: str, role: str) -> bool:
    engine = db.make_engine(url, pool_size=1)
    try:
        async with async_sessionmaker(engine)() as session:
            created = await add_user(session, username, password, role)
            await session.commit()
            return created
    finally:
        await engine.dispose()
