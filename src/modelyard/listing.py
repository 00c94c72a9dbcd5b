"""List parameters shared by every collection route: filters, sort, pages, and the envelope.

The wire form follows the reference platform: ``filter[field]=v`` or ``filter[field][$op]=v``,
``sort=name|-name|created_at|...``, pages from 1, and the envelope
``{data, pagination, sort, filter}``. Filters are declared per collection as a mapping of
field name to :class:`FilterField`, so each domain's store says *what* can be filtered and this
module says *how* the query string becomes SQL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Query, Request
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from modelyard.errors import InvalidRequest, clip

T = TypeVar("T")

SortParam = Literal["name", "-name", "created_at", "-created_at", "updated_at", "-updated_at"]
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PAGE = 1_000_000
MAX_FILTER_VALUES = 1000

STRING_OPS = ("$eq", "$like", "$in", "$nin")
TIMESTAMP_OPS = ("$eq", "$gte", "$lte")
BOOLEAN_OPS = ("$eq",)
_KEY = re.compile(r"^filter\[([^\[\]]*)\](?:\[([^\[\]]*)\])?$")


class Pagination(BaseModel):
    page: int
    page_size: int
    current_page_size: int
    total_pages: int
    total_results: int


class Page(BaseModel, Generic[T]):
    data: list[T]
    pagination: Pagination
    sort: str
    filter: dict[str, Any] | None = None
    """The filters applied; ``None`` (dropped from entity lists, as the reference does) when none."""


@dataclass(frozen=True)
class FilterField:
    """How one filterable field maps to SQL.

    ``column`` serves string and timestamp fields; ``predicate`` serves booleans that are not a
    plain column (``adapters``: the model has some).
    """

    kind: Literal["string", "timestamp", "boolean"]
    column: Any = None
    predicate: Callable[[bool], ColumnElement[bool]] | None = None

    @property
    def operators(self) -> tuple[str, ...]:
        return {"string": STRING_OPS, "timestamp": TIMESTAMP_OPS, "boolean": BOOLEAN_OPS}[self.kind]


@dataclass(frozen=True)
class ListQuery:
    """Parsed, validated list parameters, ready to apply to a ``select``."""

    conditions: tuple[ColumnElement[bool], ...]
    echo: dict[str, Any]
    sort: str
    page: int
    page_size: int


def parse_list_query(
    params: Mapping[str, Any] | Any,
    fields: Mapping[str, FilterField],
    *,
    sort: str,
    page: int,
    page_size: int,
) -> ListQuery:
    """Turn ``filter[...]`` query parameters into SQL conditions; 400 on anything unknown.

    ``params`` is Starlette's ``QueryParams`` (a multi-dict: ``$in`` may repeat).
    """
    conditions: list[ColumnElement[bool]] = []
    echo: dict[str, Any] = {}
    for key in dict.fromkeys(params.keys()):
        if not key.startswith("filter"):
            continue
        match = _KEY.match(key)
        if not match:
            raise InvalidRequest(
                f"Malformed filter parameter '{clip(key, 100)}'. Use filter[field]=value or filter[field][$op]=value"
            )
        name, op = match.group(1), match.group(2) or "$eq"
        spec = fields.get(name)
        if spec is None:
            raise InvalidRequest(f"Unknown filter field '{clip(name, 100)}'. Valid fields: {sorted(fields)}")
        if op not in spec.operators:
            raise InvalidRequest(
                f"Unknown filter operator '{clip(op, 100)}' for field '{name}'. Valid operators: {list(spec.operators)}"
            )
        values = params.getlist(key) if hasattr(params, "getlist") else [params[key]]
        conditions.append(_condition(name, spec, op, values))
        shown: Any = values if op in ("$in", "$nin") else values[-1]
        if match.group(2) is None:
            echo[name] = shown
        else:
            bucket = echo.get(name)
            if not isinstance(bucket, dict):
                bucket = echo[name] = {}
            bucket[op] = shown
    return ListQuery(tuple(conditions), echo, sort, page, page_size)


def _condition(name: str, spec: FilterField, op: str, values: Sequence[str]) -> ColumnElement[bool]:
    value = values[-1]
    if spec.kind == "boolean":
        flag = _parse_bool(name, value)
        return spec.predicate(flag) if spec.predicate is not None else spec.column.is_(flag)
    if spec.kind == "timestamp":
        moment = _parse_timestamp(name, value)
        if op == "$gte":
            return spec.column >= moment
        if op == "$lte":
            return spec.column <= moment
        return spec.column == moment
    if op in ("$in", "$nin"):
        items = [item.strip() for raw in values for item in raw.split(",") if item.strip()]
        if not items:
            raise InvalidRequest(f"Filter '{name}' with {op} needs at least one value (comma-separated)")
        if len(items) > MAX_FILTER_VALUES:
            raise InvalidRequest(f"Filter '{name}' with {op} takes at most {MAX_FILTER_VALUES} values")
        return spec.column.in_(items) if op == "$in" else spec.column.not_in(items) | spec.column.is_(None)
    if op == "$like":
        return spec.column.ilike(_like_pattern(value), escape="\\")
    return spec.column == value


def _like_pattern(value: str) -> str:
    """``*`` or ``%`` are wildcards; without any, the value matches as a substring."""
    escaped = value.replace("\\", "\\\\").replace("_", "\\_")
    pattern = escaped.replace("*", "%")
    return pattern if "%" in pattern else f"%{pattern}%"


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidRequest(f"Filter '{name}' expects true or false, got '{clip(value, 100)}'")


def _parse_timestamp(name: str, value: str) -> datetime:
    """An ISO-8601 timestamp as naive UTC (how rows store them); an offset that moves it outside
    years 1-9999 is a bad filter, not an overflow."""
    try:
        moment = datetime.fromisoformat(value.strip().replace(" ", "+"))
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
    except ValueError:
        raise InvalidRequest(
            f"Filter '{name}' expects an ISO-8601 timestamp such as 2024-01-15T09:30:00Z, got '{clip(value, 100)}'"
        ) from None
    except OverflowError:
        raise InvalidRequest(
            f"Filter '{name}': '{clip(value, 100)}' is outside the years 1-9999 once converted to UTC"
        ) from None
    return moment


def run_list_query(
    session: Session, stmt: Select[Any], query: ListQuery, sort_columns: Mapping[str, Any], tiebreak: Any
) -> tuple[list[Any], Pagination]:
    """Apply filters, sort and page to ``stmt``; return the rows and the pagination block."""
    stmt = stmt.where(*query.conditions)
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    key = query.sort.lstrip("-")
    column = sort_columns[key]
    descending = query.sort.startswith("-")
    order = (column.desc(), tiebreak.desc()) if descending else (column.asc(), tiebreak.asc())
    rows = list(
        session.scalars(stmt.order_by(*order).offset((query.page - 1) * query.page_size).limit(query.page_size))
    )
    pagination = Pagination(
        page=query.page,
        page_size=query.page_size,
        current_page_size=len(rows),
        total_pages=math.ceil(total / query.page_size) if total else 0,
        total_results=total,
    )
    return rows, pagination


def query_dependency(
    fields: Mapping[str, FilterField], *, default_page_size: int = DEFAULT_PAGE_SIZE,
    max_page_size: int = MAX_PAGE_SIZE, default_sort: str = "created_at",
) -> Callable[..., ListQuery]:
    """A FastAPI dependency that reads ``page``, ``page_size``, ``sort`` and ``filter[...]``."""
    def dependency(
        request: Request,
        page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page number, from 1")] = 1,
        # a plain default, not Annotated: the bounds are this closure's, which a string annotation cannot see
        page_size: int = Query(default_page_size, ge=1, le=max_page_size, description="Items per page"),
        sort: Annotated[SortParam, Query(description="Sort field; prefix '-' for descending")] = default_sort,  # type: ignore[assignment]
    ) -> ListQuery:
        return parse_list_query(request.query_params, fields, sort=sort, page=page, page_size=page_size)

    dependency.__doc__ = f"Filters: {', '.join(f'filter[{name}]' for name in fields)}"
    return dependency


def in_workspaces(stmt: Select[Any], column: Any, workspaces: str | Collection[str] | None) -> Select[Any]:
    """``stmt`` limited to one workspace (a name), to several (a collection: the ones a caller can read
    in a ``-`` list), or not at all (``None``)."""
    if isinstance(workspaces, str):
        return stmt.where(column == workspaces)
    if workspaces is not None:
        return stmt.where(column.in_(sorted(workspaces)))
    return stmt
