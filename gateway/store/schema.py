"""The store's tables (SQLAlchemy Core). A change here goes with a new revision under migrations/versions."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One stored response: the response object as last written, the input items its request gave, and what the
# store needs to run it (its owner, its liveness while it runs, when it expires).
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False, index=True),  # a digest of the key that made it
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("background", sa.Boolean, nullable=False),
    sa.Column("streamed", sa.Boolean, nullable=False),  # its events are kept, to be resumed by starting_after
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("previous_response_id", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),  # the running process marks it alive (heartbeat)
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
    sa.Column("body", sa.JSON, nullable=False),  # the response object
    sa.Column("input_items", sa.JSON, nullable=False),  # the request's own input items, each with its id
)

# A background stream's events, numbered by their sequence_number.
response_events = sa.Table(
    "response_events",
    metadata,
    sa.Column("response_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", sa.Text, nullable=False),
)

# A client key minted through the keys API (gateway.api.keys): only its SHA-256 digest is kept; a revoked
# key stays, marked, so that its name and id are never reused for another key's usage and audit.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # hex SHA-256 of the secret
    sa.Column("redacted", sa.String(32), nullable=False),  # its prefix and last four characters
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("scope", sa.JSON, nullable=False),  # models, groups, expires_at, max_priority, weight, metadata
    sa.Column("limits", sa.JSON, nullable=False),  # requests_per_minute, tokens_per_minute, tokens_per_day/month
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("created_by", sa.String(128), nullable=False),
)
