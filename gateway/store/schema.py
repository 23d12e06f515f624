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

# An uploaded file (or a batch's output or error file): what /v1/files lists. Its bytes are in file_chunks,
# or in a directory (batch.files_dir) when `in_dir`.
files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),  # the key's name; "" with no keys
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # uploading, processed
    sa.Column("in_dir", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

file_chunks = sa.Table(
    "file_chunks",
    metadata,
    sa.Column("file_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

# A batch: the Batch object's fields, each OpenAI timestamp in its own column.
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("completion_window", sa.String(8), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=True),
    sa.Column("errors", sa.JSON, nullable=True),
    sa.Column("output_file_id", sa.String(64), nullable=True),
    sa.Column("error_file_id", sa.String(64), nullable=True),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    *(
        sa.Column(f"{stage}_at", sa.Float, nullable=True)
        for stage in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
    ),
)

# One line of a batch's input: claimed by a process while it runs (a lease it renews), and its result,
# written once (state done), keyed by (batch_id, custom_id).
batch_lines = sa.Table(
    "batch_lines",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),  # 1-based, as the file's lines
    sa.Column("custom_id", sa.String(512), nullable=False),
    sa.Column("body", sa.JSON, nullable=True),  # the request body; None when the line was refused as it was read
    sa.Column("state", sa.String(8), nullable=False),  # pending, running, done
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("not_before", sa.Float, nullable=False),  # a line refused for load waits until then
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_at", sa.Float, nullable=True),
    sa.Column("outcome", sa.String(8), nullable=True),  # output, error
    sa.Column("result", sa.JSON, nullable=True),  # the output or error file's line
    sa.UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
    sa.Index("ix_batch_lines_state", "batch_id", "state"),
)
